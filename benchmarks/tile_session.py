"""A long captures session made by repeating a short one: for benchmarks that need 30 minutes of 720p.

    uv run python -m benchmarks.tile_session SRC_SESSION DST_RAW --times 6

``bindset synth`` renders and encodes every frame, which for a 30-min 720p session takes hours on 2 shared
cores; the build and the clock check only need media of that length and shape, with every stream where its
clock says. This writes one session into ``DST_RAW`` holding ``--times`` copies of ``SRC_SESSION`` one after
the other:

- the video (with its audio track) concatenated by FFmpeg's concat demuxer without re-encoding; copy ``k``
  starts ``S_k`` seconds after copy 0, measured on the result (:func:`tile_starts`);
- depth and thermal frames hard-linked under new numbers, their device timestamps moved by ``S_k / (1 + d)``
  (``d`` the stream's drift), so that the manifest's clock puts copy ``k`` at ``S_k`` after copy 0; a copy's
  rows stop where the next copy's first row is (the source's streams can outlast ``S_1``);
- the IMU rows likewise, labels moved by ``S_k``; the manifest's clocks are the source's. The audio stays
  where the demuxer puts it (within tens of ms of the video's copies).

The source's clocks must be exact (``synth --clocks exact``, the default), so the tiled session's are too.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
from pathlib import Path


def _video_pts(video: Path) -> list[float]:
    """Presentation times (s) of every video packet, sorted."""
    import av

    with av.open(str(video)) as c:
        s = c.streams.video[0]
        return sorted(float(p.pts * p.time_base) for p in c.demux(s) if p.pts is not None)


def tile_starts(src_video: Path, tiled_video: Path, times: int) -> list[float]:
    """Where each copy of the source video starts in the tiled one, relative to copy 0 (s): the concat
    demuxer offsets each copy by about the container's duration, but not exactly (edit lists, audio priming:
    tens of ms either way), so the other streams follow the video's measured starts."""
    n = len(_video_pts(src_video))
    pts = _video_pts(tiled_video)
    if len(pts) != n * times:
        raise ValueError(f"tiled video has {len(pts)} frames, expected {times} x {n}")
    return [pts[k * n] - pts[0] for k in range(times)]


def _tile_frames(src: Path, dst: Path, name: str, stream: dict, starts: list[float]) -> None:
    ts = stream["timestamps"]
    scale = {"ms": 1e-3, "us": 1e-6, "ns": 1e-9, "s": 1.0}[ts.get("unit", "s")]
    drift = 1 + stream["clock"].get("drift_ppm", 0.0) * 1e-6
    with open(src / ts["path"], newline="") as f:
        rows = list(csv.DictReader(f))
    (dst / stream["frames"]).mkdir()
    out = []
    first = float(rows[0]["timestamp"])
    for k, start in enumerate(starts):
        shift = start / drift / scale
        end = starts[k + 1] / drift / scale + first if k + 1 < len(starts) else float("inf")
        for i, row in enumerate(rows):
            if float(row["timestamp"]) + shift >= end:  # the next copy has begun: times never go back
                break
            new = f"{k * len(rows) + i:07d}.png"
            os.link(src / stream["frames"] / row["file"], dst / stream["frames"] / new)
            out.append({"file": new, "timestamp": f"{float(row['timestamp']) + shift:.3f}"})
    with open(dst / ts["path"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "timestamp"])
        w.writeheader()
        w.writerows(out)


def _tile_imu(src: Path, dst: Path, stream: dict, starts: list[float]) -> None:
    drift = 1 + stream["clock"].get("drift_ppm", 0.0) * 1e-6
    with open(src / stream["path"], newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    time_cols = [c for c in ("component_timestamp_ms", "canonical_timestamp_ms") if c in fields]
    with open(dst / stream["path"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        first = float(rows[0][time_cols[0]])
        for k, start in enumerate(starts):
            shift_ms = start / drift * 1e3
            end = starts[k + 1] / drift * 1e3 + first if k + 1 < len(starts) else float("inf")
            for i, row in enumerate(rows):
                if float(row[time_cols[0]]) + shift_ms >= end:  # the next copy has begun
                    break
                row = dict(row)
                if "component_idx" in row:
                    row["component_idx"] = str(k * len(rows) + i)
                for c in time_cols:
                    if row[c]:
                        row[c] = f"{float(row[c]) + shift_ms:.3f}"
                w.writerow(row)


def tile(src: Path, dst_raw: Path, times: int) -> Path:
    """Write ``dst_raw/<session>_x<times>/`` (see the module docstring); returns the session folder. Raises
    ValueError for a manifest stream this tool does not know how to tile."""
    manifest = json.loads((src / "manifest.json").read_text())
    dst = dst_raw / f"{manifest['session_id']}_x{times}"
    dst.mkdir(parents=True)
    streams = manifest["streams"]
    video = src / streams["video"]["path"]
    listing = dst / "concat.txt"
    listing.write_text("".join(f"file '{video.resolve()}'\n" for _ in range(times)))
    subprocess.run(["ffmpeg", "-v", "error", "-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy",
                    str(dst / streams["video"]["path"])], check=True)  # fmt: skip
    listing.unlink()
    starts = tile_starts(video, dst / streams["video"]["path"], times)
    for name, stream in streams.items():
        if name in ("video",) or stream.get("track") == "video":
            continue
        if "frames" in stream:
            _tile_frames(src, dst, name, stream, starts)
        elif name == "imu":
            _tile_imu(src, dst, stream, starts)
        else:
            raise ValueError(f"stream {name!r}: not tiled by this tool")
    labels = manifest.get("labels", [])
    # a copy's labels end where the next copy starts (the source's last label may run past its container)
    ends = [*starts[1:], float("inf")]
    manifest["labels"] = [{**lab, "start_s": round(lab["start_s"] + k0, 3),
                           "end_s": round(min(lab["end_s"] + k0, k1), 3)}
                          for k0, k1 in zip(starts, ends, strict=True) for lab in labels
                          if lab["start_s"] + k0 < k1]  # fmt: skip
    manifest["session_id"] = dst.name
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return dst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", type=Path, help="a captures session folder (manifest.json) with exact clocks")
    p.add_argument("dst", type=Path, help="the RAW folder to write the tiled session into")
    p.add_argument("--times", type=int, default=6)
    a = p.parse_args(argv)
    print(tile(a.src, a.dst, a.times))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
