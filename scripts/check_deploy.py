"""Offline checks of deploy/: run by scripts/check-deploy (which installs the dependencies).

Each check prints `ok` or `FAIL` with its reasons; the exit code is 1 when any failed.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES_VERSION = "1.32.0"  # pinned: the schemas every rendered object must satisfy
NAMESPACE = "istio-system"
CA_ADDRESS = "mesh-ca.istio-system.svc:8443"
PORTS = {"grpc": 8443, "http": 8080, "admin": 9090}

OVERLAYS = {
    "us": {"td": "us.cluster.local", "replicas": 3, "federates": ["eu.cluster.local"],
           "mtls": "STRICT", "cluster": "us"},
    "eu": {"td": "eu.cluster.local", "replicas": 3, "federates": ["us.cluster.local"],
           "mtls": "STRICT", "cluster": "eu"},
    "staging": {"td": "staging.cluster.local", "replicas": 1, "federates": [],
                "mtls": "PERMISSIVE", "cluster": "staging"},
}
KUBE_API_COMPONENTS = ["root-configmap", "csr-signer", "node-impersonation", "tokenreview",
                       "istiod-tls", "jwks-discovery"]

# The ca_* metrics the server exports (or is about to): dashboards and rules may name no other.
KNOWN_CA_METRICS = {
    "ca_certificates_issued_total", "ca_issuance_failures_total", "ca_issuance_duration_seconds",
    "ca_authn_failures_total", "ca_ttl_clamped_total", "ca_cert_not_after_timestamp_seconds",
    "ca_store_errors_total", "ca_revoked_certificates", "ca_denied_identities",
    "ca_crl_next_update_timestamp_seconds", "ca_federation_bundle_sequence",
    "ca_federation_last_success_timestamp_seconds", "ca_federation_fetch_errors_total",
    "ca_issuance_in_flight", "ca_issuance_waiting", "ca_issuance_shed_total",
    "ca_federation_refresh_hint_seconds", "ca_workload_identities_expiring",
    "ca_generation_state", "ca_rotations_total", "ca_rotation_convergence_ratio",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# Environment variable names and values that look like credentials.
CREDENTIAL_NAME = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|PRIVATE_?KEY|CREDENTIAL|"
                             r"DATABASE_URL|DB_URL|KEK)", re.I)
URL_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.I)
PEM_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")


class Skip(Exception):
    """A check that could not run; it is reported loudly and counted as skipped."""


class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.skipped: list[str] = []
        self.failed: list[str] = []

    def summary(self) -> int:
        print(f"check-deploy: {self.passed} passed, {len(self.failed)} failed, "
              f"{len(self.skipped)} skipped")
        for name in self.skipped:
            print(f"check-deploy: SKIPPED {name}")
        if self.failed:
            print("check-deploy FAILED: " + "; ".join(self.failed))
            return 1
        return 0

    def run(self, name: str, fn, *args) -> None:
        problems: list[str] = []
        try:
            fn(problems, *args)
        except Skip as e:
            self.skipped.append(name)
            print(f"SKIP  {name}\n        !! SKIPPED: {e}")
            return
        except Exception as e:  # a crash in a check is a failure of that check
            problems.append(f"{type(e).__name__}: {e}")
        if problems:
            self.failed.append(name)
            print(f"FAIL  {name}")
            for p in problems:
                print(f"        - {p}")
        else:
            self.passed += 1
            print(f"ok    {name}")
        sys.stdout.flush()


def sh(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, **kw)


def render(path: Path) -> list[dict]:
    result = sh(["kubectl", "kustomize", str(path)])
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {path} failed: {result.stderr.strip()}")
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def find(objects: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objects
            if o.get("kind") == kind and (name is None or o["metadata"].get("name") == name)]


def one(objects: list[dict], kind: str, name: str) -> dict:
    found = find(objects, kind, name)
    if len(found) != 1:
        raise AssertionError(f"expected exactly one {kind}/{name}, found {len(found)}")
    return found[0]


def ident(o: dict) -> str:
    ns = o.get("metadata", {}).get("namespace")
    return f"{o.get('kind')}/{(ns + '/') if ns else ''}{o.get('metadata', {}).get('name')}"


def pod_spec(o: dict) -> dict | None:
    kind = o.get("kind")
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return o["spec"]["template"]["spec"]
    if kind == "CronJob":
        return o["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if kind == "Pod":
        return o["spec"]
    return None


def walk_strings(value, path=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from walk_strings(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from walk_strings(v, f"{path}[{i}]")
    elif isinstance(value, str):
        yield path, value


# ---------------------------------------------------------------- Kubernetes schemas

BUILTIN_GROUPS = {"", "apps", "batch", "policy", "networking.k8s.io", "rbac.authorization.k8s.io",
                  "autoscaling", "certificates.k8s.io", "coordination.k8s.io"}


def is_builtin(o: dict) -> bool:
    api = o.get("apiVersion", "")
    group = api.split("/")[0] if "/" in api else ""
    return group in BUILTIN_GROUPS


def check_schemas(problems: list[str], objects: list[dict]) -> None:
    for o in objects:
        if not is_builtin(o):
            continue
        try:
            kubernetes_validate.validate(o, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = "/".join(str(p) for p in e.path)
            problems.append(f"{ident(o)}: {e.message} (at {where or 'top'})")
        except (kubernetes_validate.SchemaNotFoundError,
                kubernetes_validate.InvalidSchemaError) as e:
            problems.append(f"{ident(o)}: no Kubernetes {KUBERNETES_VERSION} schema: {e}")


# ---------------------------------------------------------------- CRDs, structurally

def expect_keys(problems, o, value, allowed, required, where):
    if not isinstance(value, dict):
        problems.append(f"{ident(o)}: {where} must be a mapping")
        return False
    for k in value:
        if k not in allowed:
            problems.append(f"{ident(o)}: unknown field {where}.{k}")
    for k in required:
        if k not in value:
            problems.append(f"{ident(o)}: missing {where}.{k}")
    return True


def check_metadata(problems, o):
    md = o.get("metadata", {})
    name = md.get("name", "")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name) or len(name) > 253:
        problems.append(f"{ident(o)}: bad metadata.name {name!r}")
    if not md.get("namespace"):
        problems.append(f"{ident(o)}: namespaced custom resource without a namespace")
    expect_keys(problems, o, o, {"apiVersion", "kind", "metadata", "spec"}, {"spec"}, "")


def check_servicemonitor(problems, o, services):
    check_metadata(problems, o)
    spec = o["spec"]
    expect_keys(problems, o, spec, {"selector", "endpoints", "namespaceSelector", "jobLabel"},
                {"selector", "endpoints"}, "spec")
    selector = spec["selector"].get("matchLabels", {})
    matched = [s for s in services
               if s["metadata"].get("namespace") == o["metadata"].get("namespace")
               and all(s["metadata"].get("labels", {}).get(k) == v for k, v in selector.items())]
    if len(matched) != 1 or matched[0]["metadata"]["name"] != "mesh-ca":
        problems.append(f"{ident(o)}: selector must match exactly the public Service mesh-ca, "
                        f"matches {[s['metadata']['name'] for s in matched]}")
        return
    port_names = {p.get("name") for p in matched[0]["spec"]["ports"]}
    for i, ep in enumerate(spec["endpoints"]):
        expect_keys(problems, o, ep, {"port", "path", "scheme", "interval", "scrapeTimeout",
                                      "tlsConfig", "relabelings", "metricRelabelings"},
                    {"port"}, f"spec.endpoints[{i}]")
        if ep.get("port") not in port_names:
            problems.append(f"{ident(o)}: endpoint port {ep.get('port')!r} is not a port of "
                            f"Service mesh-ca {sorted(port_names)}")
        if ep.get("path") != "/metrics":
            problems.append(f"{ident(o)}: endpoint path must be /metrics")
        if ep.get("scheme") not in ("http", "https"):
            problems.append(f"{ident(o)}: endpoint scheme must be http or https")
        if not re.fullmatch(r"\d+(ms|s|m|h)", str(ep.get("interval", "30s"))):
            problems.append(f"{ident(o)}: bad interval {ep.get('interval')!r}")


def check_prometheusrule(problems, o):
    check_metadata(problems, o)
    spec = o["spec"]
    expect_keys(problems, o, spec, {"groups"}, {"groups"}, "spec")
    for g in spec.get("groups", []):
        expect_keys(problems, o, g, {"name", "rules", "interval", "limit"}, {"name", "rules"},
                    "spec.groups[]")
        for r in g.get("rules", []):
            expect_keys(problems, o, r, {"alert", "record", "expr", "for", "labels",
                                         "annotations", "keep_firing_for"}, {"expr"},
                        f"spec.groups[{g.get('name')}].rules[]")
            if ("alert" in r) == ("record" in r):
                problems.append(f"{ident(o)}: a rule needs exactly one of alert and record")
            if "alert" in r and r.get("labels", {}).get("severity") not in ("warning", "critical"):
                problems.append(f"{ident(o)}: alert {r['alert']} needs severity warning|critical")


ISTIO_MODES = {"STRICT", "PERMISSIVE", "DISABLE", "UNSET"}
PRINCIPAL = re.compile(r"^(\*|[a-z0-9.-]+/ns/[a-z0-9-]+/sa/[a-z0-9.-]+|\*?[a-z0-9./-]*\*?)$")


def check_peerauthentication(problems, o):
    check_metadata(problems, o)
    if o["apiVersion"] not in ("security.istio.io/v1", "security.istio.io/v1beta1"):
        problems.append(f"{ident(o)}: apiVersion {o['apiVersion']}")
    spec = o["spec"]
    expect_keys(problems, o, spec, {"selector", "mtls", "portLevelMtls"}, {"mtls"}, "spec")
    expect_keys(problems, o, spec.get("mtls", {}), {"mode"}, {"mode"}, "spec.mtls")
    if spec.get("mtls", {}).get("mode") not in ISTIO_MODES:
        problems.append(f"{ident(o)}: mtls.mode {spec.get('mtls', {}).get('mode')!r}")


def check_authorizationpolicy(problems, o):
    check_metadata(problems, o)
    if o["apiVersion"] not in ("security.istio.io/v1", "security.istio.io/v1beta1"):
        problems.append(f"{ident(o)}: apiVersion {o['apiVersion']}")
    spec = o.get("spec") or {}
    expect_keys(problems, o, spec, {"selector", "targetRef", "targetRefs", "action", "rules",
                                    "provider"}, set(), "spec")
    if spec.get("action", "ALLOW") not in ("ALLOW", "DENY", "AUDIT", "CUSTOM"):
        problems.append(f"{ident(o)}: action {spec.get('action')!r}")
    for i, rule in enumerate(spec.get("rules", [])):
        expect_keys(problems, o, rule, {"from", "to", "when"}, set(), f"spec.rules[{i}]")
        for f in rule.get("from", []):
            expect_keys(problems, o, f, {"source"}, {"source"}, f"spec.rules[{i}].from[]")
            src = f.get("source", {})
            expect_keys(problems, o, src, {"principals", "notPrincipals", "namespaces",
                                           "notNamespaces", "ipBlocks", "notIpBlocks",
                                           "requestPrincipals", "notRequestPrincipals",
                                           "remoteIpBlocks", "notRemoteIpBlocks"}, set(),
                        f"spec.rules[{i}].from[].source")
            for p in src.get("principals", []):
                if p.startswith("spiffe://") or not PRINCIPAL.match(p):
                    problems.append(f"{ident(o)}: principal {p!r} is not "
                                    "<trust domain>/ns/<ns>/sa/<sa> (no spiffe:// prefix)")
        for t in rule.get("to", []):
            expect_keys(problems, o, t, {"operation"}, {"operation"}, f"spec.rules[{i}].to[]")
            expect_keys(problems, o, t.get("operation", {}),
                        {"hosts", "notHosts", "ports", "notPorts", "methods", "notMethods",
                         "paths", "notPaths"}, set(), f"spec.rules[{i}].to[].operation")


def check_custom_resources(problems: list[str], objects: list[dict]) -> None:
    services = find(objects, "Service")
    for o in objects:
        if is_builtin(o):
            continue
        kind = o.get("kind")
        if kind == "ServiceMonitor":
            check_servicemonitor(problems, o, services)
        elif kind == "PrometheusRule":
            check_prometheusrule(problems, o)
        elif kind == "PeerAuthentication":
            check_peerauthentication(problems, o)
        elif kind == "AuthorizationPolicy":
            check_authorizationpolicy(problems, o)
        else:
            problems.append(f"{ident(o)}: no structural check for {o.get('apiVersion')} {kind}")
    for kind in ("ServiceMonitor", "PrometheusRule"):
        if not find(objects, kind):
            problems.append(f"no {kind}")


# ---------------------------------------------------------------- policy

def check_policy(problems: list[str], objects: list[dict]) -> None:
    # Containers: not privileged, hardened, limits and probes.
    for o in objects:
        spec = pod_spec(o)
        if spec is None:
            continue
        psc = spec.get("securityContext", {})
        if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
            problems.append(f"{ident(o)}: uses the host's namespaces")
        for c in spec.get("initContainers", []) + spec.get("containers", []):
            where = f"{ident(o)} container {c['name']}"
            sc = c.get("securityContext", {})
            if sc.get("privileged"):
                problems.append(f"{where}: privileged")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation must be false")
            if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
                problems.append(f"{where}: runAsNonRoot is not set")
            if sc.get("runAsUser", psc.get("runAsUser")) == 0:
                problems.append(f"{where}: runs as uid 0")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: root filesystem is not read-only")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                problems.append(f"{where}: capabilities are not all dropped")
            if sc.get("capabilities", {}).get("add"):
                problems.append(f"{where}: adds capabilities")
            seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
            if seccomp != "RuntimeDefault":
                problems.append(f"{where}: seccompProfile is {seccomp!r}, not RuntimeDefault")
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in res.get(kind, {}):
                        problems.append(f"{where}: no {kind}.{r}")
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                p = c.get(probe, {}).get("httpGet")
                if not p:
                    problems.append(f"{where}: no {probe}")
                    continue
                if p.get("path") != path:
                    problems.append(f"{where}: {probe} path {p.get('path')!r}, expected {path}")
                port = p.get("port")
                ports = {cp.get("name"): cp.get("containerPort") for cp in c.get("ports", [])}
                number = ports.get(port, port)
                if number != PORTS["http"]:
                    problems.append(f"{where}: {probe} is not on the public HTTP port")
            for e in c.get("env", []):
                if "value" in e and (CREDENTIAL_NAME.search(e["name"])
                                     or URL_WITH_PASSWORD.search(str(e["value"]))
                                     or PEM_KEY.search(str(e["value"]))):
                    problems.append(f"{where}: env {e['name']} carries a value that looks like "
                                    "a credential; use a Secret reference")
    # No Secret carries data; no string anywhere holds a password URL or a private key.
    for o in objects:
        if o.get("kind") == "Secret" and (o.get("data") or o.get("stringData")):
            problems.append(f"{ident(o)}: a Secret with inline data")
        for path, value in walk_strings(o):
            if URL_WITH_PASSWORD.search(value):
                problems.append(f"{ident(o)}{path}: a URL with a password")
            if PEM_KEY.search(value):
                problems.append(f"{ident(o)}{path}: a private key")
    # The public Service does not expose the admin port; the admin Service exposes only it.
    deployment = one(objects, "Deployment", "mesh-ca")
    selector = deployment["spec"]["selector"]["matchLabels"]
    for s in find(objects, "Service"):
        if not all(s["spec"].get("selector", {}).get(k) == v for k, v in selector.items()):
            continue
        targets = {p.get("targetPort", p.get("port")) for p in s["spec"]["ports"]}
        exposes_admin = bool(targets & {"admin", PORTS["admin"]}) or any(
            p.get("port") == PORTS["admin"] for p in s["spec"]["ports"])
        if s["metadata"]["name"] == "mesh-ca-admin":
            if not exposes_admin or len(targets) != 1 or s["spec"].get("type",
                                                                        "ClusterIP") != "ClusterIP":
                problems.append(f"{ident(s)}: must be ClusterIP with the admin port only")
        elif exposes_admin:
            problems.append(f"{ident(s)}: a public Service exposes the admin port")
    one(objects, "Service", "mesh-ca")
    # NetworkPolicy: selects the CA pods; admin port only from labelled admin clients.
    policies = [n for n in find(objects, "NetworkPolicy")
                if all(n["spec"]["podSelector"].get("matchLabels", {}).get(k) == v
                       for k, v in selector.items())]
    if not policies:
        problems.append("no NetworkPolicy selects the mesh-ca pods")
    for n in policies:
        if "Ingress" not in n["spec"].get("policyTypes", []):
            problems.append(f"{ident(n)}: no Ingress policy type")
        for rule in n["spec"].get("ingress", []):
            ports = {p.get("port") for p in rule.get("ports", [])}
            if not rule.get("ports"):
                problems.append(f"{ident(n)}: an ingress rule without ports admits the admin port")
            if ports & {"admin", PORTS["admin"]}:
                sources = rule.get("from", [])
                ok = sources and all(
                    set(src) == {"podSelector"}
                    and src["podSelector"].get("matchLabels") == {"mesh-ca.io/admin-client": "true"}
                    for src in sources)
                if not ok:
                    problems.append(f"{ident(n)}: the admin port admits more than pods labelled "
                                    "mesh-ca.io/admin-client=true in istio-system")
    # PodDisruptionBudget and ServiceAccount without a token by default.
    if not find(objects, "PodDisruptionBudget"):
        problems.append("no PodDisruptionBudget")


def check_no_rbac_by_default(problems: list[str], objects: list[dict]) -> None:
    rbac = [ident(o) for o in objects if o.get("kind") in
            ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")]
    if rbac:
        problems.append(f"RBAC present without a kube-api component: {rbac}")
    dep = one(objects, "Deployment", "mesh-ca")
    if dep["spec"]["template"]["spec"].get("automountServiceAccountToken") is not False:
        problems.append("the mesh-ca pod mounts a ServiceAccount token by default")


# ---------------------------------------------------------------- overlay specifics

def extract_config(objects: list[dict]) -> str:
    cms = [o for o in find(objects, "ConfigMap") if o["metadata"]["name"].startswith("mesh-ca-config")]
    if len(cms) != 1:
        raise AssertionError(f"expected one mesh-ca-config ConfigMap, found {len(cms)}")
    return cms[0]["data"]["ca.toml"]


def check_overlay(problems: list[str], name: str, objects: list[dict]) -> None:
    want = OVERLAYS[name]
    dep = one(objects, "Deployment", "mesh-ca")
    if dep["spec"].get("replicas") != want["replicas"]:
        problems.append(f"replicas {dep['spec'].get('replicas')}, expected {want['replicas']}")
    spread = {t["topologyKey"] for t in
              dep["spec"]["template"]["spec"].get("topologySpreadConstraints", [])}
    for key in ("kubernetes.io/hostname", "topology.kubernetes.io/zone"):
        if key not in spread:
            problems.append(f"no topologySpreadConstraint on {key}")
    pdb = one(objects, "PodDisruptionBudget", "mesh-ca")
    if want["replicas"] > 1 and pdb["spec"].get("minAvailable", 0) < 2 and \
            pdb["spec"].get("maxUnavailable") != 1:
        problems.append("PodDisruptionBudget lets more than one replica go at once")
    config = tomllib.loads(extract_config(objects))
    tds = [td["name"] for td in config.get("trust_domains", [])]
    if tds != [want["td"]]:
        problems.append(f"trust domains {tds}, expected [{want['td']}]")
    if config.get("tls", {}).get("serving_trust_domain") != want["td"]:
        problems.append("tls.serving_trust_domain is not the overlay's trust domain")
    federates = config["trust_domains"][0].get("federates_with", [])
    peers = [f["trust_domain"] for f in config.get("federation", [])]
    if federates != want["federates"] or peers != want["federates"]:
        problems.append(f"federation {federates}/{peers}, expected {want['federates']}")
    if [c["name"] for c in config.get("clusters", [])] != [want["cluster"]]:
        problems.append(f"[[clusters]] names {[c['name'] for c in config.get('clusters', [])]}")
    if "database_url" in config:
        problems.append("database_url is inline in the ConfigMap; use database_url_file")
    for key, addr in config.get("listen", {}).items():
        if key in PORTS and not addr.endswith(f":{PORTS[key]}"):
            problems.append(f"listen.{key} = {addr} does not match container port {PORTS[key]}")
    # Every file the config names is mounted: secrets from Secrets, the rest from ConfigMaps.
    spec = dep["spec"]["template"]["spec"]
    container = spec["containers"][0]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = [(m["mountPath"], volumes[m["name"]]) for m in container["volumeMounts"]]
    files = {"database_url_file": config.get("database_url_file"),
             "keys.kek_file": config.get("keys", {}).get("kek_file"),
             "admin.bootstrap_token_file": config.get("admin", {}).get("bootstrap_token_file")}
    for key, path in files.items():
        source = next((v for mp, v in mounts if path and path.startswith(mp + "/")), None)
        if source is None or "secret" not in source:
            problems.append(f"{key} = {path!r} is not a file mounted from a Secret")
    for i, c in enumerate(config.get("clusters", [])):
        path = c.get("jwks_file", "")
        if not any(path.startswith(mp + "/") for mp, _ in mounts):
            problems.append(f"clusters[{i}].jwks_file {path!r} is not mounted")
    for i, f in enumerate(config.get("federation", [])):
        path = f.get("bootstrap_bundle_file", "")
        if not any(path.startswith(mp + "/") for mp, _ in mounts):
            problems.append(f"federation[{i}].bootstrap_bundle_file {path!r} is not mounted")
    # Probes speak TLS exactly when the public listener does.
    scheme = "HTTPS" if config.get("tls", {}).get("http_tls") else "HTTP"
    for probe in ("livenessProbe", "readinessProbe"):
        if container[probe]["httpGet"].get("scheme", "HTTP") != scheme:
            problems.append(f"{probe} scheme is not {scheme}")
    # Mesh policy.
    pa = one(objects, "PeerAuthentication", "default")
    if pa["metadata"]["namespace"] != NAMESPACE or pa["spec"]["mtls"]["mode"] != want["mtls"]:
        problems.append(f"mesh-wide PeerAuthentication is {pa['spec']['mtls']['mode']} in "
                        f"{pa['metadata']['namespace']}, expected {want['mtls']} in {NAMESPACE}")
    deny = [a for a in find(objects, "AuthorizationPolicy")
            if a["metadata"]["namespace"] == NAMESPACE and not a["spec"].get("selector")
            and a["spec"].get("action", "ALLOW") == "ALLOW" and not a["spec"].get("rules")]
    if not deny:
        problems.append("no deny-by-default AuthorizationPolicy (ALLOW, no rules) in istio-system")
    if name == "us":
        grants = [a for a in find(objects, "AuthorizationPolicy")
                  if any(p.startswith("eu.cluster.local/ns/")
                         for r in a["spec"].get("rules", []) for f in r.get("from", [])
                         for p in f["source"].get("principals", []))]
        if not grants or grants[0]["metadata"]["namespace"] == NAMESPACE:
            problems.append("no cross-region AuthorizationPolicy admitting an EU principal "
                            "into a US namespace")
    labels = dep["spec"]["template"]["metadata"].get("labels", {})
    if labels.get("sidecar.istio.io/inject") != "false" or \
            labels.get("istio.io/dataplane-mode") != "none":
        problems.append("the CA pod must stay out of the mesh (no sidecar, no ztunnel)")


def ca_server_bin() -> Path:
    return Path(os.environ.get("CA_SERVER_BIN", ROOT / "target" / "debug" / "ca-server"))


def check_config_accepted(problems: list[str], name: str, objects: list[dict]) -> None:
    binary = ca_server_bin()
    if not binary.exists():
        if CONFIGS_ONLY:
            problems.append(f"{binary} does not exist (set CA_SERVER_BIN)")
            return
        raise Skip(f"{binary} does not exist yet; scripts/test runs `scripts/check-deploy "
                   "--configs` again after its build")
    help_text = sh([str(binary), "--help"]).stdout
    if "check-config" not in help_text:
        raise Skip(f"{binary} --help does not mention --check-config: the {name} config was "
                   "NOT checked by the server")
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(extract_config(objects))
    try:
        result = sh([str(binary), "--check-config", f.name], timeout=30)
    finally:
        os.unlink(f.name)
    if result.returncode != 0:
        problems.append(f"ca-server --check-config rejects the {name} config: "
                        f"{(result.stderr or result.stdout).strip()}")


# ---------------------------------------------------------------- Istio install values

def check_istio_values(problems: list[str]) -> None:
    for name, want in OVERLAYS.items():
        istiod = yaml.safe_load((DEPLOY / "istio" / name / "istiod-values.yaml").read_text())
        ztunnel = yaml.safe_load((DEPLOY / "istio" / name / "ztunnel-values.yaml").read_text())
        if istiod.get("meshConfig", {}).get("trustDomain") != want["td"]:
            problems.append(f"istio/{name}: meshConfig.trustDomain is not {want['td']}")
        if istiod.get("global", {}).get("caAddress") != CA_ADDRESS:
            problems.append(f"istio/{name}: global.caAddress is not {CA_ADDRESS}")
        if str(istiod.get("pilot", {}).get("env", {}).get("ENABLE_CA_SERVER")).lower() != "false":
            problems.append(f"istio/{name}: pilot.env.ENABLE_CA_SERVER is not \"false\"")
        if istiod.get("global", {}).get("multiCluster", {}).get("clusterName") != want["cluster"]:
            problems.append(f"istio/{name}: global.multiCluster.clusterName is not "
                            f"{want['cluster']} (the [[clusters]] name)")
        if ztunnel.get("caAddress") != CA_ADDRESS:
            problems.append(f"istio/{name}: ztunnel caAddress is not {CA_ADDRESS}")
        if ztunnel.get("multiCluster", {}).get("clusterName") != want["cluster"]:
            problems.append(f"istio/{name}: ztunnel multiCluster.clusterName is not {want['cluster']}")
    # The post-render patch turns istiod's CA off in a chart's output (a stand-in istiod here).
    stub = {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "istiod", "namespace": NAMESPACE},
            "spec": {"selector": {"matchLabels": {"app": "istiod"}}, "template": {
                "metadata": {"labels": {"app": "istiod"}},
                "spec": {"containers": [{"name": "discovery", "image": "istio/pilot",
                                         "env": [{"name": "ENABLE_CA_SERVER", "value": "true"},
                                                 {"name": "PILOT_TRACE_SAMPLING", "value": "1"}]}]}}}}
    script = DEPLOY / "istio" / "istiod-post-render" / "post-render"
    result = sh([str(script)], input=yaml.safe_dump(stub))
    if result.returncode != 0:
        problems.append(f"istiod post-render failed: {result.stderr.strip()}")
        return
    out = [d for d in yaml.safe_load_all(result.stdout) if d]
    env = out[0]["spec"]["template"]["spec"]["containers"][0]["env"]
    values = {e["name"]: e.get("value") for e in env}
    if values.get("ENABLE_CA_SERVER") != "false" or values.get("PILOT_TRACE_SAMPLING") != "1":
        problems.append(f"istiod post-render: env is {values}")


# ---------------------------------------------------------------- Prometheus rules

RULES = DEPLOY / "prometheus" / "mesh-ca-rules.yaml"
PROMETHEUSRULE = DEPLOY / "prometheus" / "prometheusrule.yaml"


def prometheusrule_text() -> str:
    rules = yaml.safe_load(RULES.read_text())
    obj = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
           "metadata": {"name": "mesh-ca", "labels": {"app.kubernetes.io/name": "mesh-ca"}},
           "spec": {"groups": rules["groups"]}}
    header = ("# GENERATED from mesh-ca-rules.yaml by scripts/check-deploy --write-prometheusrule;"
              " do not edit.\n")
    return header + yaml.safe_dump(obj, sort_keys=False, width=100)


def check_prometheusrule_in_sync(problems: list[str]) -> None:
    if not PROMETHEUSRULE.exists() or PROMETHEUSRULE.read_text() != prometheusrule_text():
        problems.append(f"{PROMETHEUSRULE.relative_to(ROOT)} differs from "
                        f"{RULES.relative_to(ROOT)}: run scripts/check-deploy --write-prometheusrule")


def check_promtool_rules(problems: list[str]) -> None:
    result = sh(["promtool", "check", "rules", str(RULES)])
    if result.returncode != 0:
        problems.append(f"promtool check rules: {(result.stdout + result.stderr).strip()}")
    tests = sorted((DEPLOY / "prometheus" / "tests").glob("*.yaml"))
    if not tests:
        problems.append("no rule tests in deploy/prometheus/tests")
    for t in tests:
        result = sh(["promtool", "test", "rules", t.name], cwd=t.parent)
        if result.returncode != 0:
            problems.append(f"promtool test rules {t.name}:\n{(result.stdout + result.stderr).strip()}")
    # Every alert has at least one unit test that expects it to fire.
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"]
              for r in g["rules"] if "alert" in r}
    tested = set()
    for t in tests:
        for case in yaml.safe_load(t.read_text()).get("tests", []):
            for a in case.get("alert_rule_test", []):
                if a.get("exp_alerts"):
                    tested.add(a["alertname"])
    if alerts - tested:
        problems.append(f"alerts without a firing test: {sorted(alerts - tested)}")


# ---------------------------------------------------------------- dashboards

GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h",
                "${__rate_interval}": "5m"}


def dashboard_exprs(path: Path) -> list[tuple[str, str]]:
    board = json.loads(path.read_text())
    out = []

    def panels(ps):
        for p in ps:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(board.get("panels", [])):
        for t in p.get("targets", []):
            if t.get("expr"):
                out.append((p.get("title", "?"), t["expr"]))
    for v in board.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"label_values\((.+),\s*\w+\)", q or "")
        if m:
            out.append((f"variable {v['name']}", m.group(1)))
    return out


def substitute(expr: str) -> str:
    for k, v in GRAFANA_VARS.items():
        expr = expr.replace(k, v)
    return re.sub(r"\$\{?(\w+)\}?", "x", expr)  # other variables: a plain label value


def check_dashboards(problems: list[str]) -> None:
    boards = sorted((DEPLOY / "grafana").glob("*.json"))
    if {b.name for b in boards} != {"mesh-ca.json", "mtls-security.json"}:
        problems.append(f"dashboards: {[b.name for b in boards]}")
    rules = []
    for b in boards:
        board = json.loads(b.read_text())
        for key in ("uid", "title", "panels", "schemaVersion"):
            if key not in board:
                problems.append(f"{b.name}: no {key}")
        ids = [p["id"] for p in board["panels"]]
        if len(ids) != len(set(ids)):
            problems.append(f"{b.name}: duplicate panel ids")
        for i, (title, expr) in enumerate(dashboard_exprs(b)):
            rules.append({"record": f"dashboard:{b.stem.replace('-', '_')}:{i}",
                          "expr": substitute(expr), "labels": {"panel": title}})
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, f)
    try:
        result = sh(["promtool", "check", "rules", f.name])
    finally:
        os.unlink(f.name)
    if result.returncode != 0:
        problems.append(f"a dashboard query is not PromQL: {(result.stdout + result.stderr).strip()}")


# ---------------------------------------------------------------- metric names

METRIC_TOKEN = re.compile(r"\b(ca_[a-z0-9_]+)")


def used_ca_metrics() -> dict[str, set[str]]:
    used: dict[str, set[str]] = {}
    sources = [RULES] + sorted((DEPLOY / "grafana").glob("*.json"))
    for src in sources:
        if src.suffix == ".json":
            exprs = [e for _, e in dashboard_exprs(src)]
        else:
            exprs = [r["expr"] for g in yaml.safe_load(src.read_text())["groups"]
                     for r in g["rules"]]
        for e in exprs:
            for m in METRIC_TOKEN.findall(re.sub(r'"[^"]*"', '""', e)):
                name = m
                for suffix in HISTOGRAM_SUFFIXES:
                    if name.endswith(suffix) and name[: -len(suffix)] in KNOWN_CA_METRICS:
                        name = name[: -len(suffix)]
                used.setdefault(name, set()).add(src.name)
    return used


def check_metrics(problems: list[str]) -> None:
    used = used_ca_metrics()
    unknown = {m: sorted(s) for m, s in used.items() if m not in KNOWN_CA_METRICS}
    if unknown:
        problems.append(f"ca_* metrics the server does not export: {unknown}")
    listed = [line.strip() for line in (DEPLOY / "METRICS.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    if sorted(listed) != sorted(used):
        problems.append(f"deploy/METRICS.txt is not the list of ca_* metrics used: missing "
                        f"{sorted(set(used) - set(listed))}, extra {sorted(set(listed) - set(used))}")


# ---------------------------------------------------------------- Containerfile

def check_containerfile(problems: list[str]) -> None:
    hadolint = ROOT / "target" / "pyenv" / "bin" / "hadolint"
    containerfile = DEPLOY / "image" / "Containerfile"
    result = sh([str(hadolint), "--no-color", "--failure-threshold", "info", str(containerfile)])
    if result.returncode != 0:
        problems.append(f"hadolint: {(result.stdout + result.stderr).strip()}")
    text = containerfile.read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    if not users or users[-1].split(":")[0] in ("0", "root"):
        problems.append("the image does not end as a non-root USER")


# ---------------------------------------------------------------- main

def with_components(overlay: str, components: list[str], work: Path, label: str) -> Path:
    """A throw-away overlay: `overlay` plus the given kube-api components (kustomize wants
    relative paths)."""
    d = work / f"{overlay}-kube-api-{label}"
    d.mkdir()
    rel = lambda p: os.path.relpath(p, d)  # noqa: E731
    (d / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [rel(DEPLOY / "overlays" / overlay)],
        "components": [rel(DEPLOY / "components" / "kube-api" / c) for c in components]}))
    return d


def check_kube_api(problems: list[str], objects: list[dict]) -> None:
    dep = one(objects, "Deployment", "mesh-ca")
    if dep["spec"]["template"]["spec"].get("automountServiceAccountToken") is not True:
        problems.append("a kube-api component must mount the ServiceAccount token")
    for o in objects:
        if o.get("kind") in ("ClusterRoleBinding", "RoleBinding"):
            for s in o.get("subjects", []):
                if (s.get("kind"), s.get("name"), s.get("namespace")) != \
                        ("ServiceAccount", "mesh-ca", NAMESPACE):
                    problems.append(f"{ident(o)}: binds {s}")
        if o.get("kind") in ("ClusterRole", "Role"):
            for r in o.get("rules", []):
                if "*" in r.get("verbs", []) or "*" in r.get("resources", []) or \
                        "*" in r.get("apiGroups", []):
                    problems.append(f"{ident(o)}: wildcard rule {r}")
                if "secrets" in r.get("resources", []) and (o["kind"] == "ClusterRole" or set(
                        r["verbs"]) - {"get", "create", "update"}):
                    problems.append(f"{ident(o)}: Secrets beyond get/create/update in istio-system")


CONFIGS_ONLY = False


def main() -> int:
    global CONFIGS_ONLY
    if sys.argv[1:] == ["--write-prometheusrule"]:
        PROMETHEUSRULE.write_text(prometheusrule_text())
        print(f"wrote {PROMETHEUSRULE.relative_to(ROOT)}")
        return 0
    if sys.argv[1:] == ["--configs"]:
        # Only `ca-server --check-config` on each rendered config (after the binary is built).
        CONFIGS_ONLY = True
        checks = Checks()
        for name in ["base", *OVERLAYS]:
            path = DEPLOY / ("base" if name == "base" else f"overlays/{name}")
            checks.run(f"{name}: ca-server --check-config",
                       lambda p, path=path, name=name: check_config_accepted(p, name, render(path)))
        return checks.summary()
    elif sys.argv[1:]:
        print("usage: scripts/check-deploy [--configs | --write-prometheusrule]", file=sys.stderr)
        return 2
    checks = Checks()
    rendered: dict[str, list[dict]] = {}
    for name in ["base", *OVERLAYS]:
        path = DEPLOY / ("base" if name == "base" else f"overlays/{name}")
        try:
            rendered[name] = render(path)
            checks.run(f"render {name}", lambda p: None)
        except Exception as e:
            checks.run(f"render {name}", lambda p, e=e: p.append(str(e)))
    (ROOT / "target").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ROOT / "target") as tmp:
        # Each Kubernetes-API component alone (its RBAC must stand on its own), then all of them.
        for components in [[c] for c in KUBE_API_COMPONENTS] + [KUBE_API_COMPONENTS]:
            label = "all" if len(components) > 1 else components[0]
            name = f"us+kube-api/{label}"
            try:
                rendered[name] = render(with_components("us", components, Path(tmp), label))
                checks.run(f"render {name}", lambda p: None)
            except Exception as e:
                checks.run(f"render {name}", lambda p, e=e: p.append(str(e)))
    for name, objects in rendered.items():
        checks.run(f"{name}: Kubernetes {KUBERNETES_VERSION} schemas (strict)", check_schemas,
                   objects)
        checks.run(f"{name}: custom resources (structure)", check_custom_resources, objects)
        checks.run(f"{name}: policy", check_policy, objects)
        if "+" in name:
            checks.run(f"{name}: least-privilege RBAC", check_kube_api, objects)
        else:
            checks.run(f"{name}: no RBAC by default", check_no_rbac_by_default, objects)
        if name in OVERLAYS:
            checks.run(f"{name}: trust domain, replicas, federation, mounts, mesh policy",
                       check_overlay, name, objects)
        if "+" not in name:
            checks.run(f"{name}: ca-server --check-config", check_config_accepted, name, objects)
    checks.run("Istio install values and istiod post-render patch", check_istio_values)
    checks.run("PrometheusRule matches mesh-ca-rules.yaml", check_prometheusrule_in_sync)
    checks.run("promtool check rules + test rules", check_promtool_rules)
    checks.run("dashboards: every query parses as PromQL", check_dashboards)
    checks.run("metric names (deploy/METRICS.txt)", check_metrics)
    checks.run("Containerfile: hadolint, non-root", check_containerfile)
    return checks.summary()


if __name__ == "__main__":
    sys.exit(main())
