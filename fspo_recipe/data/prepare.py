"""``fspo-prepare``: Elix / Review / Roleplay preference data -> few-shot FSPO JSONL and fairseq2 asset cards; plain
preference pairs (Anthropic HH, SHP, StackExchange, OpenAssistant2, UltraFeedback) -> fairseq2 preference JSONL.

    fspo-prepare elix --input Asap7772/elix_generations_gpt4omini_pref --out data/ --name elix
    fspo-prepare review --input datasets/samples/review --split-mode interpolated --out data/
    fspo-prepare roleplay --input my_rows.parquet --split-mode heldout_users --test-users 0.1 --out data/
    fspo-prepare hh --input Anthropic/hh-rlhf --out data/
    fspo-prepare shp --out data/ --max-pairs-per-prompt 5

Writes ``OUT/NAME/{train,valid,test}.jsonl``, a card per split (``NAME_train`` ...; load with
``--config common.assets.extra_path=OUT dataset.name=NAME_train``) and ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fspo_recipe.data.build import (SPLITS, EpisodeOptions, SplitStats, assign_splits, build_split_episodes,
                                   drop_duplicate_rows, plain_examples)
from fspo_recipe.data.sources import SOURCES, ReadReport, SourceSchemaError, get_source, option_values, read_source
from fspo_recipe.data.sources.base import at_least, fraction
from fspo_recipe.files import Commit, atomic_directory, jsonl_line, recover_stale
from fspo_recipe.lock import OutputInUseError, OutputLock
from fspo_recipe.progress import ProgressBar

MARKER = "fspo-prepare"
"""``summary.json``'s ``written_by``: the mark of a directory this command wrote (and may replace)."""


def dataset_card(name: str, jsonl_name: str, description: str) -> str:
    """A fairseq2 asset card for the plugin's ``fspo_preference`` reader; ``data`` is relative to the card file."""
    return (
        f"# {description}\n"
        f"name: {name}\n"
        "dataset_family: fspo_preference\n"
        f"data: {jsonl_name}\n"
    )


class OutputRefusedError(ValueError):
    """The output directory must not be written: it holds the input, or data this command did not write."""


def check_output(final: Path, inputs: Sequence[str], *, overwrite: bool) -> None:
    """Refuse an output that would destroy data: ``final`` is or contains an input, is a file, or is an existing
    directory that is not a prepared data set (or is one, and ``overwrite`` is not given)."""
    target = final.resolve()
    for given in inputs:
        path = Path(given)
        if not path.exists():
            continue  # a hub name
        source = path.resolve()
        if source == target or target in source.parents:
            raise OutputRefusedError(
                f"The output {final} is or contains the input {given}: writing it would delete the input. "
                "Choose another --out or --name."
            )
        if source.is_dir() and source in target.parents:
            raise OutputRefusedError(
                f"The output {final} is inside the input directory {given}: fspo-prepare never writes into its "
                "input. Choose another --out."
            )
    for parent in [target, *target.parents]:
        if parent.exists() and not parent.is_dir():
            raise OutputRefusedError(f"{parent} is a file, not a directory: choose another --out.")
    if not target.exists():
        return
    summary = target / "summary.json"
    try:
        written_by = json.loads(summary.read_text(encoding="utf-8")).get("written_by")
    except (OSError, ValueError, AttributeError):
        written_by = None
    if written_by != MARKER:
        raise OutputRefusedError(
            f"{final} exists and was not written by fspo-prepare (no {summary} marked written_by: {MARKER}); "
            "not replacing it. Choose another --out or --name, or remove it yourself."
        )
    if not overwrite:
        raise OutputRefusedError(f"{final} holds a prepared data set already; pass --overwrite to replace it.")


def _say(progress: bool, message: str) -> None:
    """One line per stage on stderr, so that nobody watches a silent terminal (or log) for half a minute."""
    if progress:
        print(f"fspo-prepare: {message}", file=sys.stderr, flush=True)

PERCENTILES = (50, 90, 99, 100)
TOKEN_SAMPLE = 2000  # prompts per split whose tokens are counted for the summary


def percentiles(values: Sequence[int]) -> dict[str, int]:
    """Nearest-rank percentiles p50, p90, p99 and the max of ``values`` (empty: {})."""
    if not values:
        return {}
    ordered = sorted(values)
    return {f"p{p}": ordered[min(len(ordered) - 1, max(0, -(-p * len(ordered) // 100) - 1))] for p in PERCENTILES}


def prepare(
    source: str,
    inputs: Sequence[str],
    out_dir: Path,
    *,
    name: str | None = None,
    options: EpisodeOptions,
    split_mode: str = "source",
    valid_fraction: float = 0.0,
    valid_users: float = 0,
    test_users: float = 0,
    test_user_names: Sequence[str] = (),
    count_tokens: Callable[[str], int] | None = None,
    progress: bool = True,
    overwrite: bool = False,
    commit: Commit | None = None,
    keep_identical: bool = False,
    log: bool = True,
    source_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Prepare one source; return the summary that is also written as ``summary.json``.

    ``progress`` shows a progress bar on a terminal, ``log`` one line per stage on stderr. An existing output is
    replaced only with ``overwrite`` and only if fspo-prepare wrote it (:func:`check_output`); ``commit`` says
    whether the new data set is in place (for a caller interrupted by a signal). ``source_options``: values of the
    source's own options (``spec.options``, by key; defaults for the others).
    """
    spec = get_source(source)
    name = name or source
    if options.num_shots < 0:
        raise ValueError(f"--shots must be >= 0, got {options.num_shots}.")
    if options.num_passes is not None and options.num_passes < 1:
        raise ValueError(f"--passes must be >= 1, got {options.num_passes}.")
    if spec.plain and (options.num_shots or options.rationale != "none" or split_mode != "source"):
        raise ValueError(f"{source} holds plain preference pairs without users: use --shots 0, no --rationale and "
                         "--split-mode source (its own train/test splits).")
    values = option_values(spec, source_options)
    final = out_dir / name
    check_output(final, inputs, overwrite=overwrite)  # before anything is touched, the input included
    with OutputLock(final, "fspo-prepare", directory=False):
        for line in recover_stale(out_dir, name):
            _say(log, line)
        check_output(final, inputs, overwrite=overwrite)  # again: a data set may have been put back
        report = ReadReport()
        started = time.perf_counter()

        _say(log, f"reading {source} from {', '.join(inputs)}")
        by_source_split = drop_duplicate_rows(read_source(spec, inputs, report, keep_identical=keep_identical,
                                                          options=values), report)
        if spec.after_reading is not None:
            by_source_split = spec.after_reading(by_source_split, values, report, options.seed)
        _say(log, f"read {report.rows_read} rows in {time.perf_counter() - started:.1f} s"
             + "".join(f"; {line}" for line in report.lines()))
        if not any(by_source_split.values()):  # say why, before a split says only that no user is left
            reasons = sorted(report.skipped.items(), key=lambda kv: -kv[1])
            raise ValueError(f"no usable row in {', '.join(inputs)}: every row was skipped ("
                             + ("; ".join(f"{n} {why}" for why, n in reasons[:4]) or "none read")
                             + "). Nothing was written.")
        splits = assign_splits(
            by_source_split,
            split_mode,  # type: ignore[arg-type]
            seed=options.seed,
            valid_fraction=valid_fraction,
            valid_users=valid_users,
            test_users=test_users,
            test_user_names=test_user_names,
            attributes=spec.attributes,
        )
        _say(log, "split (" + split_mode + "): " + ", ".join(
            f"{split} {len(rows)} rows of {len({r.user for r in rows})} users"
            for split, rows in splits.items() if rows))

        summary: dict[str, Any] = {
            "source": source,
            "inputs": list(inputs),
            "split_mode": split_mode,
            "num_shots": options.num_shots,
            "num_passes": options.passes(),
            "seed": options.seed,
            "include_dispreferred": options.include_dispreferred,
            "rationale": options.rationale,
            "rows_read": report.rows_read,
            "rows_skipped": dict(report.skipped),
            "rows_flagged": dict(report.flagged),
            "keep_identical_pairs": keep_identical,
            **values,
            "splits": {},
            "written_by": MARKER,
        }

        with atomic_directory(final, commit) as tmp:
            for split in SPLITS:
                rows = splits[split]
                if not rows:
                    continue
                stats = SplitStats()
                lengths: list[int] = []
                sample: list[str] = []
                rng = random.Random(f"summary:{split}")
                jsonl = f"{split}.jsonl"
                users = {row.user for row in rows}
                with (tmp / jsonl).open("wb") as fp, ProgressBar(progress, f"{name}/{split}", len(users)) as tick:
                    last_users = 0
                    examples = plain_examples(rows, stats) if spec.plain else build_split_episodes(rows, options, stats)
                    for episode in examples:
                        fp.write(jsonl_line(episode))
                        lengths.append(len(episode["src"]))
                        # Reservoir sample of prompts for the token percentiles (when tokens are counted).
                        if count_tokens is None:
                            pass
                        elif len(sample) < TOKEN_SAMPLE:
                            sample.append(episode["src"])
                        else:
                            j = rng.randrange(stats.episodes)
                            if j < TOKEN_SAMPLE:
                                sample[j] = episode["src"]
                        if stats.users != last_users:
                            tick(stats.users - last_users)
                            last_users = stats.users
                    tick(len(users) - last_users)
                _say(log, f"{split}: {stats.episodes} episodes of {stats.users} users "
                     f"({time.perf_counter() - started:.1f} s so far)")
                if stats.episodes == 0:
                    (tmp / jsonl).unlink()
                else:
                    card = f"{name}_{split}"
                    what = ("plain preference pairs" if spec.plain else f"{options.num_shots} shots")
                    (tmp / f"{card}.yaml").write_text(
                        dataset_card(card, jsonl, f"{'' if spec.plain else 'FSPO '}{source} {split} split, {what} "
                                     "(fspo-prepare)"),
                        encoding="utf-8",
                    )
                info: dict[str, Any] = {
                    "episodes": stats.episodes,
                    "users": stats.users,
                    "rows": len(rows),
                    "users_skipped_too_few_rows": stats.users_too_few_rows,
                    "rows_of_skipped_users": stats.rows_of_skipped_users,
                    "windows_skipped_one_question": stats.windows_one_question,
                    "prompt_chars": percentiles(lengths),
                }
                if count_tokens is not None and sample:
                    info["prompt_tokens"] = percentiles([count_tokens(s) for s in sample])
                    info["prompt_tokens_sample"] = len(sample)
                summary["splits"][split] = info
            summary["seconds"] = round(time.perf_counter() - started, 2)
            if not any(info["episodes"] for info in summary["splits"].values()):
                raise ValueError(
                    f"No episode was made from {report.rows_read} rows: every user has fewer than "
                    f"{options.num_shots + 1} usable rows (shots + 1) or every row was skipped. Nothing was written."
                )
            (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        return summary


def format_summary(summary: dict[str, Any], out: Path) -> str:
    rate = f" ({summary['rows_read'] / summary['seconds']:.0f} rows/s)" if summary["seconds"] else ""
    lines = [f"{summary['source']}: {summary['rows_read']} rows read in {summary['seconds']} s{rate} -> {out}"]
    for reason, count in sorted(summary["rows_skipped"].items()):
        lines.append(f"  skipped {count} row(s): {reason}")
    for reason, count in sorted(summary.get("rows_flagged", {}).items()):
        lines.append(f"  kept {count} row(s) with {reason}")
    for split, info in summary["splits"].items():
        line = f"  {split:<5} {info['episodes']:>8} episodes  {info['users']:>6} users  prompt chars {info['prompt_chars']}"
        if "prompt_tokens" in info:
            line += f"  tokens {info['prompt_tokens']} (sample of {info['prompt_tokens_sample']})"
        lines.append(line)
        if info.get("windows_skipped_one_question"):
            lines.append(f"        skipped {info['windows_skipped_one_question']} window(s) of rows that all share "
                         "their question (a query is never answered by its own shots)")
        if info["users_skipped_too_few_rows"]:
            lines.append(
                f"        skipped {info['users_skipped_too_few_rows']} user(s) with fewer than "
                f"{summary['num_shots'] + 1} rows ({info['rows_of_skipped_users']} rows)"
            )
    return "\n".join(lines)


def _token_counter(tokenizer: str, assets_dir: Path | None) -> Callable[[str], int]:
    """Count tokens with a fairseq2 tokenizer card (``assets_dir`` adds a card directory)."""
    from fairseq2 import setup_fairseq2
    from fairseq2.context import get_runtime_context
    from fairseq2.data.text.tokenizers import get_text_tokenizer_hub

    from fspo_recipe.assets import add_card_directory

    setup_fairseq2()
    if assets_dir is not None:
        add_card_directory(get_runtime_context(), assets_dir)
    encoder = get_text_tokenizer_hub().load(tokenizer).create_encoder(mode="prompt")
    return lambda text: len(encoder(text))


def _count_or_fraction(text: str) -> float:
    """argparse type of --test-users / --valid-users: a whole number of users, or a fraction in (0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of users or a fraction in (0, 1), got '{text}'") from None
    if not math.isfinite(value) or value < 0 or (value >= 1 and value != int(value)):
        raise argparse.ArgumentTypeError(f"expected a number of users (0, 1, 2, ...) or a fraction in (0, 1), "
                                         f"got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fspo-prepare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="source", required=True, metavar="{" + ",".join(SOURCES) + "}")
    for key, spec in SOURCES.items():
        p = sub.add_parser(
            key,
            help=f"{key} ({spec.hub_name})",
            description=f"Prepare {key}. Source schema: {spec.schema_text()}.",
        )
        p.add_argument("--input", nargs="+", default=[spec.hub_name], metavar="PATH_OR_HUB_NAME",
                       help=f"local parquet/JSON/JSONL files or directories, or a hub name (default: {spec.hub_name})")
        p.add_argument("--out", type=Path, required=True, help="output directory; the data set goes to OUT/NAME")
        p.add_argument("--name", default=key, help=f"name of the data set and prefix of its cards (default: {key})")
        p.add_argument("--overwrite", action="store_true",
                       help="replace OUT/NAME if it holds a data set fspo-prepare wrote (never anything else)")
        # Plain pair sources have no users: their help leaves the per-user options out; they are still parsed, so
        # that one given anyway gets prepare()'s message saying why it does not apply.
        def per_user(*names: str, help: str, **kwargs: Any) -> None:
            p.add_argument(*names, help=argparse.SUPPRESS if spec.plain else help, **kwargs)

        per_user("--shots", type=at_least(0), default=spec.default_shots,
                 help=f"shots per episode (default: {spec.default_shots}, as in the paper)")
        per_user("--passes", type=at_least(1), default=None,
                 help="reshuffling passes per user (default: 2*(shots+1))")
        p.add_argument("--seed", type=int, default=0, help="seed of shuffles and user splits (default: 0)")
        per_user("--split-mode", choices=["source", "heldout_users", "interpolated"], default=spec.default_split_mode,
                 help="source: the data set's own splits; heldout_users: whole users for valid/test; "
                 "interpolated (sources with attribute users, i.e. review): single-attribute users train, "
                 f"combinations test (default: {spec.default_split_mode})")
        p.add_argument("--valid-fraction", type=fraction, default=0.0,
                       help="source/interpolated: fraction of each user's train rows for valid, in [0, 1) "
                       "(default: 0)")
        per_user("--test-users", type=_count_or_fraction, default=0.1,
                 help="heldout_users: number of test users, or a fraction in (0, 1) of the users, at least "
                 "one (default: 0.1)")
        per_user("--valid-users", type=_count_or_fraction, default=0,
                 help="heldout_users: number of valid users, or a fraction in (0, 1) (default: 0)")
        per_user("--test-user-names", default="", help="heldout_users: comma-separated test users")
        per_user("--no-dispreferred", action="store_true", help="show only the preferred response of each shot")
        per_user("--rationale", choices=["none", "generated", "teacher_forced"], default="none",
                 help="user-description rationale: in the targets (generated) or the prompt (teacher_forced)")
        p.add_argument("--keep-identical-pairs", action="store_true",
                       help="keep rows whose preferred and dispreferred responses are equal (default: skip and "
                       "count them: they carry no preference)")
        p.add_argument("--tokenizer", default=None,
                       help="fairseq2 tokenizer card for token percentiles in the summary (e.g. llama3_2_3b_instruct)")
        p.add_argument("--assets-dir", type=Path, default=None, help="extra fairseq2 card directory for --tokenizer")
        for option in spec.options:  # the source's own options
            p.add_argument(option.flag, type=option.parse, default=option.default, help=option.help, dest=option.key)
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        p.add_argument("--quiet", action="store_true", help="no per-stage lines on stderr (errors still print)")
    return parser


class Interrupted(BaseException):
    """SIGTERM (what SLURM and `kill` send) or SIGINT arrived: unwind so that nothing half-written stays."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = EpisodeOptions(
        num_shots=args.shots,
        num_passes=args.passes,
        seed=args.seed,
        include_dispreferred=not args.no_dispreferred,
        rationale=args.rationale,
    )
    previous = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGTERM, signal.SIGINT)}
    commit = Commit()
    final = args.out / args.name
    try:
        count_tokens = _token_counter(args.tokenizer, args.assets_dir) if args.tokenizer else None
        summary = prepare(
            args.source,
            args.input,
            args.out,
            name=args.name,
            options=options,
            split_mode=args.split_mode,
            valid_fraction=args.valid_fraction,
            valid_users=args.valid_users,
            test_users=args.test_users,
            test_user_names=[u for u in args.test_user_names.split(",") if u],
            count_tokens=count_tokens,
            progress=not args.no_progress,
            overwrite=args.overwrite,
            commit=commit,
            keep_identical=args.keep_identical_pairs,
            log=not args.quiet,
            source_options={o.key: getattr(args, o.key) for o in get_source(args.source).options},
        )
    except Interrupted as ex:
        if commit.done:
            state = f"the new data set was already in place: {final} is complete"
        elif commit.replaced or final.exists():
            state = f"nothing written: {final} holds the data set it held before"
        else:
            state = "nothing written"
        print(f"fspo-prepare: interrupted ({signal.Signals(ex.signum).name}); {state}", file=sys.stderr)
        return 128 + ex.signum
    except (SourceSchemaError, ValueError, OSError, OutputInUseError) as ex:
        print(f"fspo-prepare: {ex}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(format_summary(summary, args.out / args.name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
