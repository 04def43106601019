"""`ctp-train retrieve`: video retrieval with the VCOP protocol (docs/spec.md), between any two splits.

Gallery = data.train, queries = data.test (the protocol: training split vs test split). Each video gives
VCOP's 10 clips of 16 consecutive frames (`retrieval_clip_indices`), resized to 171×128 and centre cropped
to 112; its feature is the encoder's final feature map (standard strides) max-pooled by (1, 2, 2) and
flattened, averaged over the clips; neighbours are ranked by cosine distance and a query hits at k when
one of its k nearest gallery videos has its class (matched by name, so the splits may come from
different datasets). When the splits overlap, a video never retrieves itself.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from common.atomic import write_json
from common.tables import format_table
from trainer.downstream.clips import retrieval_clip_indices
from trainer.downstream.config import DownstreamConfig, load_downstream_config
from trainer.downstream.datasets import LabelledSet, open_split
from trainer.downstream.evaluate import video_means
from trainer.downstream.model import is_finetuned, load_encoder, read_state
from trainer.downstream.report import percent, results_path
from trainer.downstream.scoring import RETRIEVAL_KS, retrieval_hits
from trainer.model.encoders import Encoder
from trainer.runtime.distributed import Ranks, process_group
from trainer.runtime.execution import Execution


def retrieval_features(feature_map: torch.Tensor) -> torch.Tensor:
    """(N, C, T', H', W') final conv map → (N, C·T'·⌊H'/2⌋·⌊W'/2⌋): max-pooled by (1, 2, 2), flattened."""
    return F.max_pool3d(feature_map, kernel_size=(1, 2, 2)).flatten(1)


def video_features(
    encoder: Encoder, data: LabelledSet, cfg: DownstreamConfig, execution: Execution, ranks: Ranks = Ranks()
) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions in `data` of the decodable videos, their features (V, D))."""
    encoder.eval()
    positions, features, _ = video_means(
        lambda x: retrieval_features(encoder(x)),
        data,
        cfg,
        execution,
        ranks,
        desc=f"features of {data.name}",
        indices=retrieval_clip_indices,
    )
    return positions, features


def retrieve(
    encoder: Encoder,
    gallery: LabelledSet,
    queries: LabelledSet,
    cfg: DownstreamConfig,
    execution: Execution,
    ranks: Ranks = Ranks(),
    ks: tuple[int, ...] = RETRIEVAL_KS,
) -> dict[str, Any]:
    """Hit rates at each k of `queries` against `gallery`."""
    g_pos, g_feat = video_features(encoder, gallery, cfg, execution, ranks)
    same_split = [v.path for v in queries.videos] == [v.path for v in gallery.videos]
    q_pos, q_feat = (g_pos, g_feat) if same_split else video_features(encoder, queries, cfg, execution, ranks)
    names = sorted(set(gallery.classes) | set(queries.classes))
    g_labels = torch.tensor([names.index(gallery.classes[gallery.labels[i]]) for i in g_pos.tolist()])
    q_labels = torch.tensor([names.index(queries.classes[queries.labels[i]]) for i in q_pos.tolist()])
    ids: dict[str, int] = {}
    g_ids = torch.tensor([ids.setdefault(gallery.videos[i].path, len(ids)) for i in g_pos.tolist()])
    q_ids = torch.tensor([ids.setdefault(queries.videos[i].path, len(ids)) for i in q_pos.tolist()])
    same = q_ids[:, None] == g_ids[None, :]
    hits = retrieval_hits(q_feat, q_labels, g_feat, g_labels, ks, same if same.any() else None)
    return {
        "gallery": gallery.name,
        "queries": queries.name,
        "gallery_videos": len(g_pos),
        "query_videos": len(q_pos),
        "feature_size": g_feat.shape[1],
        "clips_per_video": cfg.clips.test_clips,
        "top_k": {str(k): hits[k] for k in ks},
        "skipped": [dataclasses.asdict(r) for r in (*gallery.rejected, *queries.rejected)],
    }


def retrieve_with(
    weights: Path | None, config: str | None = None, overrides: list[str] | None = None, out: Path | None = None
) -> None:
    """`ctp-train retrieve`: top-k retrieval of data.test queries against the data.train gallery with an encoder's
    features (`weights`; None: random initialisation); print the results and write them as JSON."""
    saved = _saved_config(weights)
    cfg = load_downstream_config(config, overrides, base=saved)
    with process_group(cfg.run.device) as ranks:
        execution = Execution.for_rank(ranks, cfg.run)
        encoder = execution.prepare(load_encoder(cfg.model.encoder, weights))
        gallery, queries = ranks.broadcast(
            (
                open_split(cfg.data.train, progress=cfg.run.progress),
                open_split(cfg.test_split, progress=cfg.run.progress),
            )
            if ranks.is_main
            else None
        )
        results = retrieve(encoder, gallery, queries, cfg, execution, ranks)
    if not ranks.is_main:
        return
    anchor = weights or Path(cfg.run.out_dir) / f"random-{encoder.name}.pt"
    out = out or results_path(anchor, "retrieval", gallery.name, queries.name)
    write_json(out, {"task": "retrieve", "weights": str(weights) if weights else f"random {encoder.name}", **results})
    rows = [(f"top-{k} (%)", percent(v)) for k, v in results["top_k"].items()]
    print(
        format_table(
            rows,
            ("metric", "value"),
            title=f"retrieve: {results['query_videos']} queries of {queries.name} against {results['gallery_videos']} "
            f"videos of {gallery.name} ({weights or 'random init'})",
        )
    )
    print(f"results: {out}")


def _saved_config(weights: Path | None) -> dict[str, Any] | None:
    """The config of a fine-tuned checkpoint, whose splits are then the default ones."""
    if weights is None:
        return None
    state = read_state(weights)
    return state["config"] if is_finetuned(state) else None
