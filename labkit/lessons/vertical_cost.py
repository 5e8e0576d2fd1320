"""Lesson 02's price of scaling up: the published pgbench table the USL is fitted to, a public price list, and
what 1000 transactions/s cost on each machine size if throughput follows the fitted curve."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from labkit.checkpoints import checkpoint
from labkit.datasets.tables import read_csv
from labkit.lessons import usl

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "PRICES_CSV",
    "PUBLISHED_CSV",
    "check_cost_rises",
    "check_published_peak",
    "cost_table",
    "plot_cost",
    "prices",
    "published",
]

PUBLISHED_CSV = "pgbench-pg91-select-only-haas.csv"


PRICES_CSV = "aws-ec2-m5-on-demand-us-east-1.csv"


def published() -> pd.DataFrame:
    """Robert Haas's PostgreSQL 9.1 pgbench -S throughput vs clients (see datasets/README.md)."""
    import pandas as pd

    rows = read_csv(PUBLISHED_CSV)
    return pd.DataFrame({"clients": [int(r["clients"]) for r in rows], "tps": [float(r["tps"]) for r in rows]})


def prices() -> pd.DataFrame:
    """Machine sizes and on-demand prices (see datasets/README.md for source and date)."""
    import pandas as pd

    rows = read_csv(PRICES_CSV)
    return pd.DataFrame(
        {
            "instance": [r["instance"] for r in rows],
            "vcpus": [int(r["vcpus"]) for r in rows],
            "memory_gib": [float(r["memory_gib"]) for r in rows],
            "usd_per_hour": [float(r["usd_per_hour"]) for r in rows],
        }
    )


def cost_table(fit: usl.USLFit, price: pd.DataFrame) -> pd.DataFrame:
    """Cost of 1000 transactions/s on each machine size, if its throughput follows ``fit`` with N = vCPUs.

    The assumption (Gunther's, for hardware scalability): a machine with p vCPUs, kept busy by p
    backends, serves X(p) of the fitted USL. Prices grow linearly with vCPUs; throughput does not.
    """
    out = price.copy()
    out["predicted_tps"] = [float(fit.predict(p)) for p in out["vcpus"]]
    out["usd_per_hour_per_1k_tps"] = out["usd_per_hour"] / (out["predicted_tps"] / 1000)
    return out


def check_published_peak(fit: usl.USLFit, data: pd.DataFrame) -> None:
    """The fitted N* lies between the client counts around the published table's highest throughput."""
    d = data.sort_values("clients").reset_index(drop=True)
    i = int(d["tps"].to_numpy().argmax())  # a position: the index was reset above
    lo = float(d["clients"].iloc[max(0, i - 1)])
    hi = float(d["clients"].iloc[min(len(d) - 1, i + 1)])
    where = f"data peaks at {int(d['clients'].iloc[i])} clients; fitted N*={fit.n_star:.1f}"
    checkpoint(f"the published table's USL peak N* is at least {lo:g} clients", fit.n_star, at_least=lo, context=where)
    checkpoint(f"the published table's USL peak N* is at most {hi:g} clients", fit.n_star, at_most=hi, context=where)


def check_cost_rises(cost: pd.DataFrame, factor: float = 2.0) -> None:
    """The biggest machine costs at least ``factor`` times more per unit of throughput than the smallest."""
    c = cost.sort_values("vcpus")["usd_per_hour_per_1k_tps"].tolist()
    checkpoint(
        f"cost per 1k tps on the biggest machine is at least {factor:g}x the smallest's",
        c[-1] / c[0],
        at_least=factor,
        context=f"{c[0]:.3f} -> {c[-1]:.3f} USD/h per 1k tps",
    )


def plot_cost(cost: pd.DataFrame) -> Any:
    """Price per hour and cost per 1000 tps against machine size."""
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
    ax1.plot(cost["vcpus"], cost["usd_per_hour"], "o-")
    ax1.set_xlabel("machine size (vCPUs)")
    ax1.set_ylabel("on-demand price (USD/hour)")
    ax1.grid(alpha=0.3)
    ax2.plot(cost["vcpus"], cost["usd_per_hour_per_1k_tps"], "o-", color="C3")
    ax2.set_xlabel("machine size (vCPUs)")
    ax2.set_ylabel("cost of 1000 tps (USD/hour)")
    ax2.set_yscale("log")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    return fig
