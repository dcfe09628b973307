"""Plots `ca-bench soak`'s CSV: four panels over the run's minutes (scripts/soak-plot runs it)."""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def rolling_median(values: list[float], width: int = 5) -> list[float]:
    """The median of each sample and the `width - 1` before it: the level, without the samples
    a Postgres stall catches (the soak's verdict compares levels, see ca-bench soak)."""
    out = []
    for i in range(len(values)):
        window = sorted(values[max(0, i - width + 1) : i + 1])
        out.append(window[len(window) // 2])
    return out


def main(source: str, target: str) -> None:
    with open(source, newline="") as f:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    if not rows:
        sys.exit(f"{source}: no samples")
    minutes = [r["elapsed_s"] / 60 for r in rows]
    column = lambda name: [r[name] for r in rows]  # noqa: E731
    fig, axes = plt.subplots(4, 1, figsize=(10, 12), sharex=True)
    axes[0].plot(minutes, column("issued_per_s"), label="issued/s")
    axes[0].set_ylabel("issuances/s")
    axes[0].set_ylim(bottom=0)
    axes[1].plot(minutes, column("p50_ms"), label="p50")
    axes[1].plot(minutes, column("p99_ms"), label="p99")
    axes[1].set_ylabel("latency (ms)")
    axes[1].set_ylim(bottom=0)
    axes[2].plot(minutes, column("rss_mb"), label="server RSS (MiB)", color="tab:red", alpha=0.4)
    axes[2].plot(minutes, rolling_median(column("rss_mb")), label="RSS, rolling median of 5", color="tab:red")
    if "rss_anon_mb" in rows[0]:
        anon = column("rss_anon_mb")
        axes[2].plot(minutes, anon, label="anonymous (heap)", color="tab:orange", alpha=0.4)
        axes[2].plot(minutes, rolling_median(anon), label="anonymous, rolling median of 5", color="tab:orange")
    axes[2].set_ylabel("RSS (MiB)")
    axes[2].set_ylim(bottom=0)
    cpu = axes[2].twinx()
    cpu.plot(minutes, column("server_cpu_pct"), label="server CPU (%)", color="tab:gray", alpha=0.6)
    cpu.set_ylabel("server CPU (%)")
    cpu.set_ylim(bottom=0)
    axes[3].plot(minutes, [v / 1024 for v in column("pg_size_mb")], label="Postgres database")
    axes[3].set_ylabel("database (GiB)")
    if "pg_connections" in rows[0]:
        pool = axes[3].twinx()
        pool.plot(minutes, column("pg_connections"), label="server's connections", color="tab:green", alpha=0.6)
        pool.set_ylabel("connections")
        pool.set_ylim(bottom=0)
        pool.legend(loc="lower right")
    axes[3].set_xlabel("minutes")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left")
    cpu.legend(loc="upper right")
    fig.suptitle("ca-bench soak: ca-server (release) on Postgres, open loop")
    fig.tight_layout()
    fig.savefig(target, dpi=100)
    print(target)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
