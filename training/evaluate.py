"""`bindset eval`: retrieval and zero-shot figures of materialised embeddings, in the spirit of ImageBind's
Table 2, as Markdown and JSON.

    bindset eval EMB [--split val] [--out DIR]

- image<->modality recall@1/5/10 (both directions) over the split's samples that carry both;
- emergent modality->modality retrieval between two trained encoders (e.g. audio->depth), pairs that a
  disjoint-pairing run never saw together: instance recall@k and class-retrieval accuracy (the top hit
  shares the query's label) next to its chance level (sum of squared label shares of the candidates);
- zero-shot classification: each embedding against the text tower's embeddings of prompts made from the
  class names (labels), accuracy next to chance (1/classes).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from schemas.errors import InputError
from training import emb_store as S

KS = (1, 5, 10)
TEMPLATES = ("a photo of {}.", "the sound of {}.", "a recording of {}.")


@dataclass(frozen=True)
class Retrieval:
    query: str
    target: str
    n: int
    recall: dict[str, float]  # "R@1" -> fraction
    class_acc: float | None = None  # top-1 hit has the query's label
    class_chance: float | None = None


@dataclass(frozen=True)
class ZeroShot:
    modality: str
    n: int
    classes: int
    accuracy: float
    chance: float


@dataclass
class EvalReport:
    split: str
    run_id: str
    image_modality: list[Retrieval] = field(default_factory=list)
    emergent: list[Retrieval] = field(default_factory=list)
    zero_shot: list[ZeroShot] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def markdown(self) -> str:
        pct = lambda x: "–" if x is None else f"{100 * x:.1f}"  # noqa: E731
        lines = [f"# bindset eval: run {self.run_id}, split `{self.split}`", "",
                 "## Image ↔ modality retrieval (recall@k, %)", "",
                 "| query → target | n | R@1 | R@5 | R@10 |", "|---|---:|---:|---:|---:|"]  # fmt: skip
        for r in self.image_modality:
            cells = " | ".join(pct(r.recall[f"R@{k}"]) for k in KS)
            lines.append(f"| {r.query} → {r.target} | {r.n} | {cells} |")
        lines += ["", "## Emergent retrieval (never paired in training)", "",
                  "| query → target | n | R@1 | R@5 | R@10 | class acc | chance | × chance |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for r in self.emergent:
            ratio = r.class_acc / r.class_chance if r.class_chance else float("nan")
            lines.append(f"| {r.query} → {r.target} | {r.n} | "
                         + " | ".join(pct(r.recall[f"R@{k}"]) for k in KS)
                         + f" | {pct(r.class_acc)} | {pct(r.class_chance)} | {ratio:.2f} |")  # fmt: skip
        lines += ["", "## Zero-shot classification from text prompts of the class names", "",
                  "| modality | n | classes | accuracy | chance |", "|---|---:|---:|---:|---:|"]  # fmt: skip
        for z in self.zero_shot:
            lines.append(f"| {z.modality} | {z.n} | {z.classes} | {pct(z.accuracy)} | {pct(z.chance)} |")
        return "\n".join(lines) + "\n"


def _load(emb: Path, modality: str, split: str) -> tuple[list[str], list[str | None], np.ndarray]:
    """The split's keys, labels and vectors of one modality, read part by part (only the split is kept)."""
    rows, v = S.read_vectors(emb, modality, split)
    return rows.column("key").to_pylist(), rows.column("label").to_pylist(), v


def retrieval(query: str, target: str, q, t) -> Retrieval | None:
    """Row-aligned on shared keys: query i's true match is target i."""
    qk, ql, qv = q
    tk, tl, tv = t
    pos = {k: i for i, k in enumerate(tk)}
    shared = [k for k in qk if k in pos]
    if len(shared) < 2:
        return None
    qpos = {k: i for i, k in enumerate(qk)}
    qi = [qpos[k] for k in shared]
    ti = [pos[k] for k in shared]
    sim = qv[qi] @ tv[ti].T
    true = np.diag(sim)
    rank = (sim > true[:, None]).sum(1)  # 0 = the true match is the top hit
    recall = {f"R@{k}": float((rank < k).mean()) for k in KS}
    labels = np.array([ql[i] for i in qi], dtype=object)
    class_acc = chance = None
    if all(x is not None for x in labels):
        top = sim.argmax(1)
        class_acc = float((labels[top] == labels).mean())
        _, counts = np.unique(labels.astype(str), return_counts=True)
        chance = float(((counts / counts.sum()) ** 2).sum())
    return Retrieval(query, target, len(shared), recall, class_acc, chance)


def zero_shot(modality: str, data, class_names: list[str], lr) -> ZeroShot | None:
    _, labels, v = data
    keep = [i for i, x in enumerate(labels) if x is not None]
    if not keep or len(class_names) < 2:
        return None
    import torch

    with torch.no_grad():
        protos = []
        for name in class_names:
            t = lr.towers.encode_text([tpl.format(name) for tpl in TEMPLATES], lr.device).mean(0)
            protos.append((t / t.norm()).cpu().numpy())
    pred = (v[keep] @ np.stack(protos).T).argmax(1)
    truth = np.array([class_names.index(labels[i]) for i in keep])
    return ZeroShot(modality, len(keep), len(class_names), float((pred == truth).mean()), 1 / len(class_names))


def evaluate(emb: Path | str, split: str = "val", out: Path | str | None = None) -> EvalReport:
    """The report of EMB's ``split`` (module docstring), written as ``out``/eval.json and eval.md (default EMB).

    EMB and ``out`` may be ``s3://`` / ``gs://`` URLs (read and written through the storage seam)."""
    from pipelines import storage
    from training.embed import load_run

    emb = S.emb_root(emb)
    meta = S.read_meta(emb)
    sets = {m: _load(emb, m, split) for m in meta["modalities"]}
    if "image" not in sets or not sets["image"][0]:
        raise InputError(f"{emb}: no image embeddings in split {split!r}")
    report = EvalReport(split, meta["run_id"])
    trained = [m for m in ("audio", "depth", "thermal", "imu") if m in sets]
    for m in trained:
        for q, t in ((m, "image"), ("image", m)):
            r = retrieval(q, t, sets[q], sets[t])
            if r:
                report.image_modality.append(r)
    for i, a in enumerate(trained):
        for b in trained[i + 1 :]:
            for q, t in ((a, b), (b, a)):
                r = retrieval(q, t, sets[q], sets[t])
                if r:
                    report.emergent.append(r)
    class_names = sorted({x for d in sets.values() for x in d[1] if x is not None})
    if class_names:
        lr = load_run(meta["run"])
        for m in ("image", *trained):
            z = zero_shot(m, sets[m], class_names, lr)
            if z:
                report.zero_shot.append(z)
    out = S.emb_root(out) if out else emb
    storage.put_atomic(out / "eval.json", (json.dumps(report.to_dict(), indent=1) + "\n").encode())
    storage.put_atomic(out / "eval.md", report.markdown().encode())
    return report
