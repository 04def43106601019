"""Does CtP pretraining help? The smallest honest transfer experiment, on a CPU (issue 15, docs/transfer.md).

    python -m experiments.transfer [--quick] [--split test|val] [--out docs/results/transfer.json] [--work out/transfer]

A labelled video set that needs no download: real encoded videos (a slowly panning textured background,
1-2 small textured distractors gliding in straight lines) in which one more textured object, the actor,
moves in one of five ways (orbit, horizontal, vertical or diagonal swing, pulsing size): the class. Four splits of
disjoint source material (each video's pixels come from its own seed, and the splits' seeds never meet):
an unlabelled pretraining pool, labelled training videos, a validation set for any choice, and the test set.

Arms, all the same tiny encoder and the same fine-tuning recipe and step budget, each with its own
fine-tuning lr chosen on val: `scratch` (random init);
`ctp_full`: CtP pretraining on the pool with the full generation spec (the paper's, with the clip geometry
of the tiny_cpu preset: 64 px crops and patch sizes scaled to them); `ctp_simple`: the tiny_cpu preset's
simplified game. Pretraining and fine-tuning are the project's own
`pretrain()` and `finetune()`, in single-threaded worker processes; the score is `finetune()`'s own
end-of-run video-level top-1 (10 clips per video) on the evaluated split. The report records wall time,
CPU time (the budget: 45 minutes of 2 cores) and load average, since the machine may be shared.
`--linear-probe` is a diagnostic: the same runs with the encoders frozen (linear evaluation).
Seeds are fixed here, before any run: pretraining seed 0, fine-tuning seeds 0, 1, 2 (which also choose the
label subsets).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from common.atomic import write_json
from experiments.transfer.arms import cpu_seconds, finetune_run, now, pretrain_arm
from experiments.transfer.dataset import CLASSES, SPLITS, build_dataset
from experiments.transfer.plan import ARMS, BUDGET_CPU_SECONDS, FULL, QUICK, Plan
from experiments.transfer.report import commit, machine, plot, summarise, table, verdict

log = logging.getLogger("experiments.transfer")


def _worker() -> None:
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("trainer", "datagen"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run(
    plan: Plan, work: Path, split: str, out: Path, image: Path | None, command: str, workers: int = 2
) -> dict[str, Any]:
    started, cpu_started, started_at, load_start = time.perf_counter(), cpu_seconds(), now(), os.getloadavg()
    data = work / "videos"
    index = build_dataset(data, plan)
    timings = {"videos_s": time.perf_counter() - started}
    pretraining: dict[str, Any] = {}
    results: dict[str, dict[str, dict[str, float]]] = {}
    runs = []
    # One single-threaded process per core: a tiny model uses two threads poorly, and scratch's runs need
    # no pretraining, so they fill the cores while the pretrainings run.
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker) as pool:
        pretrainings = {
            arm: pool.submit(
                pretrain_arm, arm, data / "pool", work / "pretrain" / arm, plan.pretrain_steps[arm], index["spec"]
            )
            for arm in plan.arms
            if arm != "scratch"
        }
        jobs = {}
        for arm in plan.arms:  # scratch first: its jobs are queued before waiting for any pretraining
            init = None
            if arm in pretrainings:
                init, pretraining[arm] = pretrainings[arm].result()
                timings[f"pretrain_{arm}_done_s"] = time.perf_counter() - started
            for fraction in plan.fractions:
                for seed in plan.seeds:
                    lr = plan.finetune_lr[arm]
                    kind = "probe" if plan.linear_probe else "finetune"
                    run_dir = work / kind / split / arm / f"lr{lr:g}" / f"{fraction:g}" / f"seed{seed}"
                    args = (data / "train", data / split, init, fraction, seed, plan.finetune_steps, lr)
                    run_args = (run_dir, index["spec"], plan.linear_probe)
                    jobs[arm, fraction, seed] = pool.submit(finetune_run, *args, *run_args)
        for (arm, fraction, seed), job in jobs.items():
            done = job.result()
            results.setdefault(arm, {}).setdefault(f"{fraction:g}", {})[str(seed)] = done["top1"]
            runs.append({"arm": arm, "fraction": fraction, "seed": seed, **done})
            log.info("%s %g seed %d: %s top-1 %.3f", arm, fraction, seed, split, done["top1"])
    timings["total_s"] = time.perf_counter() - started
    cpu = cpu_seconds() - cpu_started
    reused = sum(r["cpu_seconds"] for r in pretraining.values() if r["reused"])
    reused_finetuning = sum(r["cpu_seconds"] for r in runs if r["reused"])
    budget = {
        "started": started_at,
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "cpu_seconds_this_process": cpu,
        "cpu_seconds_reused_pretraining": reused,  # spent by an earlier run of the same pretraining
        "cpu_seconds_reused_finetuning": reused_finetuning,  # likewise, by earlier runs of the same fine-tunings
        "cpu_seconds_total": cpu + reused + reused_finetuning,
        "cpu_seconds_budget": BUDGET_CPU_SECONDS,
    }
    summary = summarise(results)
    lowest = f"{min(plan.fractions):g}"
    report = {
        "command": command,
        "machine": machine(),
        "date": now(),
        "commit": commit(),
        "evaluated_split": split,
        "plan": dataclasses.asdict(plan),
        "classes": CLASSES,
        "videos": {s: sum(1 for v in index["videos"] if v["split"] == s) for s in SPLITS},
        "pretraining": pretraining,
        "seconds": timings,
        "budget": budget,
        "workers": workers,
        "top1": results,
        "runs": runs,
        "summary": summary,
        "verdict_at_lowest_fraction": {"fraction": lowest, **verdict(summary, lowest)},
    }
    write_json(out, report)
    if image is not None:
        plot(summary, image, f"tiny encoder, {split} top-1 (mean ± sd over {len(plan.seeds)} seeds), 5 motion classes")
    print(table(summary, results))
    print(json.dumps(report["verdict_at_lowest_fraction"], indent=1))
    print(
        f"took {timings['total_s'] / 60:.1f} min wall, {budget['cpu_seconds_total']:.0f} CPU-s "
        f"(budget {BUDGET_CPU_SECONDS}); results: {out}"
    )
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m experiments.transfer", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a few videos and steps: checks the pipeline, not the outcome")
    p.add_argument(
        "--split",
        choices=("test", "val"),
        default="test",
        help="what the fine-tuned models are scored on: val for any choice, test for the report",
    )
    p.add_argument("--work", type=Path, default=Path("out/transfer"), help="videos, checkpoints and run folders")
    p.add_argument("--out", type=Path, default=Path("docs/results/transfer.json"), help="the results JSON")
    p.add_argument("--image", type=Path, default=Path("docs/images/transfer.png"), help="the plot (PNG)")
    p.add_argument("--pretrain-steps", type=int, default=None, help="override the plan's pretraining steps")
    p.add_argument("--finetune-steps", type=int, default=None, help="override the plan's fine-tuning steps")
    p.add_argument(
        "--arms", nargs="+", choices=ARMS, default=None, help="a subset of the arms (scratch is the reference)"
    )
    p.add_argument("--fractions", nargs="+", type=float, default=None, help="override the plan's label fractions")
    p.add_argument(
        "--finetune-lr",
        type=float,
        default=None,
        help="one fine-tuning lr (per 32 clips) for every arm, instead of the plan's per-arm lr",
    )
    p.add_argument("--scene", default=None, help="override the scene, as JSON fields of Scene (choices on val only)")
    p.add_argument(
        "--workers", type=int, default=2, help="single-threaded processes running the pretrainings and fine-tunings"
    )
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="override the plan's fine-tuning seeds")
    p.add_argument(
        "--linear-probe",
        action="store_true",
        help="a diagnostic: train only the classifier on each arm's frozen encoder (model.freeze_encoder)",
    )
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("trainer", "datagen"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.arms and "scratch" not in args.arms:
        p.error("--arms must include scratch: every arm is judged against it")
    plan = QUICK if args.quick else FULL
    overrides: dict[str, Any] = {
        k: v
        for k, v in (
            ("pretrain_steps", args.pretrain_steps and dict.fromkeys(ARMS[1:], args.pretrain_steps)),
            ("finetune_steps", args.finetune_steps),
            ("arms", tuple(args.arms or ())),
            ("fractions", tuple(args.fractions or ())),
            ("seeds", tuple(args.seeds or ())),
            ("finetune_lr", args.finetune_lr and dict.fromkeys(ARMS, args.finetune_lr)),
            ("scene", args.scene and dataclasses.replace(plan.scene, **json.loads(args.scene))),
            ("linear_probe", args.linear_probe),
        )
        if v
    }
    run(
        dataclasses.replace(plan, **overrides),
        args.work,
        args.split,
        args.out,
        args.image,
        " ".join(["python -m experiments.transfer", *argv]),
        args.workers,
    )
