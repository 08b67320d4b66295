#!/usr/bin/env python3
"""The pandas side of the open-data release benchmark (opendata/benches/release.rs).

Reads the same Parquet file of scooter trips and does the equivalent k-anonymous release:
start_time truncated to the hour, start coordinates projected to EPSG:3035 (ellipsoidal LAEA,
the same formula as the Rust crate, vectorised with numpy; no pyproj on this machine) and
binned into 500 m cells, groupby (hour, cell) with nunique(device_id) and size, primary
suppression of cells with fewer than k vehicles. pandas has no exact DP sampler (no discrete
Laplace over a CSPRNG), so this side adds no noise. Prints `seconds=<float>` (read + release,
median of the runs) and `cells=<n> released=<n>`.
"""

import sys
import time

import numpy as np
import pandas as pd

K = 10
GRID_M = 500


def laea(lat, lon):
    a = 6378137.0
    f = 1 / 298.257222101
    e2 = 2 * f - f * f
    e = np.sqrt(e2)

    def q(phi):
        s = np.sin(phi)
        return (1 - e2) * (s / (1 - e2 * s * s) - (1 / (2 * e)) * np.log((1 - e * s) / (1 + e * s)))

    phi0 = np.radians(52.0)
    qp = q(np.pi / 2)
    b0 = np.arcsin(q(phi0) / qp)
    rq = a * np.sqrt(qp / 2)
    d = a * (np.cos(phi0) / np.sqrt(1 - e2 * np.sin(phi0) ** 2)) / (rq * np.cos(b0))
    beta = np.arcsin(np.clip(q(np.radians(lat)) / qp, -1, 1))
    dl = np.radians(lon) - np.radians(10.0)
    b = rq * np.sqrt(2 / (1 + np.sin(b0) * np.sin(beta) + np.cos(b0) * np.cos(beta) * np.cos(dl)))
    east = 4321000.0 + b * d * np.cos(beta) * np.sin(dl)
    north = 3210000.0 + (b / d) * (np.cos(b0) * np.sin(beta) - np.sin(b0) * np.cos(beta) * np.cos(dl))
    return east, north


def release(path):
    df = pd.read_parquet(path, columns=["device_id", "start_time", "start_lat", "start_lon"])
    df = df.dropna()
    east, north = laea(df["start_lat"].to_numpy(), df["start_lon"].to_numpy())
    df["hour"] = df["start_time"].dt.floor("h")
    df["cell"] = (np.floor(east / GRID_M).astype(np.int64) << 32) | (np.floor(north / GRID_M).astype(np.int64) & 0xFFFFFFFF)
    out = df.groupby(["hour", "cell"], sort=True).agg(vehicles=("device_id", "nunique"), trips=("device_id", "size"))
    small = out["vehicles"] < K
    out.loc[small, ["vehicles", "trips"]] = np.nan
    return len(out), int((~small).sum())


def main():
    path = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        cells, released = release(path)
        times.append(time.perf_counter() - t0)
    times.sort()
    print(f"seconds={times[len(times) // 2]:.4f}")
    print(f"cells={cells} released={released}")


if __name__ == "__main__":
    main()
