"""An independent Istio CA client: Python grpcio with stubs generated from our proto by
grpcio-tools at run time, and a CSR made by pyca/cryptography the way istio-agent makes one
(RSA-2048, one critical URI SAN).

Prints one JSON object: the chain of an authenticated call, and the status code of a call
without credentials. Used by the Rust end-to-end tests (tests/tests/e2e/interop.rs)."""

import argparse
import importlib
import json
import os
import sys
import tempfile

import grpc
import grpc_tools
from grpc_tools import protoc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


def generate_stubs(proto_root, out_dir):
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    code = protoc.main([
        "protoc",
        f"-I{proto_root}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        os.path.join(proto_root, "istio/v1/auth/ca.proto"),
    ])
    if code != 0:
        raise SystemExit(f"protoc failed: {code}")
    for d in ["istio", "istio/v1", "istio/v1/auth"]:
        open(os.path.join(out_dir, d, "__init__.py"), "a").close()
    sys.path.insert(0, out_dir)
    return (importlib.import_module("istio.v1.auth.ca_pb2"),
            importlib.import_module("istio.v1.auth.ca_pb2_grpc"))


def make_csr(spiffe_id):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "istio")]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=True)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--proto-root", required=True)
    parser.add_argument("--addr", required=True)
    parser.add_argument("--ca-file", required=True)
    parser.add_argument("--server-name", default="localhost")
    parser.add_argument("--token", required=True)
    parser.add_argument("--cluster-id", default="Kubernetes")
    parser.add_argument("--spiffe-id", required=True)
    parser.add_argument("--validity", type=int, default=3600)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as out_dir:
        pb2, pb2_grpc = generate_stubs(args.proto_root, out_dir)
        with open(args.ca_file, "rb") as f:
            credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
        options = [("grpc.ssl_target_name_override", args.server_name)]
        with grpc.secure_channel(args.addr, credentials, options=options) as channel:
            stub = pb2_grpc.IstioCertificateServiceStub(channel)
            request = pb2.IstioCertificateRequest(csr=make_csr(args.spiffe_id), validity_duration=args.validity)
            request.metadata.update({"CertSigner": ""})
            response = stub.CreateCertificate(
                request,
                metadata=[("authorization", f"Bearer {args.token}"), ("clusterid", args.cluster_id)],
                timeout=30,
            )
            chain = list(response.cert_chain)
            leaf = x509.load_pem_x509_certificate(chain[0].encode())
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            try:
                stub.CreateCertificate(pb2.IstioCertificateRequest(csr=make_csr(args.spiffe_id)), timeout=30)
                anonymous = "OK"
            except grpc.RpcError as e:
                anonymous = e.code().name
    print(json.dumps({
        "cert_chain": chain,
        "leaf_uris": san.value.get_values_for_type(x509.UniformResourceIdentifier),
        "san_critical": san.critical,
        "anonymous": anonymous,
    }))


if __name__ == "__main__":
    main()
