"""`skillops`: single-stage commands over the same library functions the flow uses.

The full pipeline runs as the Prefect flow (`python flows/train_esco.py`, or a deployment); this
CLI never re-sequences it. Heavy libraries are imported inside commands, so `--help` is instant.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

DEFAULT_RECIPE = "esco-occupation-skills"


def _recipe(args):
    from skillops.config import load_recipe

    return load_recipe(args.recipe)


def cmd_recipes(args) -> int:
    from skillops.config import builtin_recipes, load_recipe

    for name, path in builtin_recipes().items():
        recipe = load_recipe(path)
        print(f"{name:28} {recipe.description}  [{path}]")
    return 0


def _data_recipe(path: Path, shape: str | None, columns: dict[str, str]):
    """A default recipe around a bare data file or folder, so `validate` takes data directly."""
    from skillops.config import parse_recipe
    from skillops.inputs.tables import read_source

    if path.is_dir() and any(path.glob("occupations_*.csv")):
        language = sorted(path.glob("occupations_*.csv"))[0].stem.removeprefix("occupations_")
        return parse_recipe(
            {"name": path.name, "data": {"format": "esco", "path": str(path), "language": language}}, str(path)
        )
    if shape is None:  # guess from the column names
        frame, _, _ = read_source(
            parse_recipe({"name": "x", "data": {"format": "table", "path": str(path)}}, str(path)).data
        )
        names = set(frame.columns) | set(columns)
        shape = (
            "scored_pairs"
            if "score" in names
            else "triplets"
            if any(n.startswith("negative") for n in names)
            else "pairs"
        )
    scored = shape == "scored_pairs"
    return parse_recipe(
        {
            "name": path.stem,
            "data": {"format": "table", "path": str(path), "shape": shape, "columns": columns},
            "loss": {"name": "cosine_similarity" if scored else "mnrl"},
            "evaluation": {"evaluator": "embedding_similarity", "primary_metric": "spearman_cosine"}
            if scored
            else {"evaluator": "information_retrieval", "primary_metric": "cosine_ndcg_at_10"},
        },
        str(path),
    )


def cmd_validate(args) -> int:
    from skillops.config import RECIPE_SUFFIXES, load_recipe
    from skillops.inputs import preparation
    from skillops.inputs.validation import validate_prepared, validate_recipe_data

    target = Path(args.recipe)
    is_data = target.exists() and target.suffix not in RECIPE_SUFFIXES
    columns = dict(pair.split("=", 1) for pair in args.columns.split(",")) if args.columns else {}
    recipe = _data_recipe(target, args.shape, columns) if is_data else load_recipe(args.recipe)
    reports = [validate_recipe_data(recipe)]
    if reports[0].success:
        # What the pipeline would build from it: the split, the frozen eval sets, leakage and
        # lengths. Mining needs the model and is left to the pipeline.
        unmined = recipe.model_copy(update={"data": recipe.data.model_copy(update={"mine_negatives": None})})
        with tempfile.TemporaryDirectory() as tmp:
            task = preparation.build_task(unmined)
            reports.append(validate_prepared(task, unmined, preparation.write_task(task, Path(tmp), {})))
    for report in reports:
        print(report.markdown())
    if args.html:
        Path(args.html).write_text("".join(report.html() for report in reports), "utf-8")
        print(f"HTML report: {args.html}")
    return 0 if all(report.success for report in reports) else 1


def cmd_evaluate(args) -> int:
    from skillops.inputs import preparation
    from skillops.judging.evaluation import evaluate
    from skillops.tracking import registry
    from skillops.training.modeling import load_model

    recipe = _recipe(args)
    task = preparation.build_task(recipe)  # the same split and frozen sets a pipeline run scores on
    if args.split not in task.eval_sets:
        print(
            f"skillops evaluate: no eval set {args.split!r}; this recipe has {sorted(task.eval_sets)}.", file=sys.stderr
        )
        return 2
    if args.model.startswith("models:/"):
        model = registry.load(args.model, as_served=True)  # scored as it is served
    else:
        model = load_model(args.model, recipe.training.max_seq_length)
    with tempfile.TemporaryDirectory() as tmp:
        paths = preparation.write_task(task, Path(tmp), {})
        scores = evaluate(model, paths.eval_set(args.split), recipe.evaluation, recipe.prompts)
    for name, value in scores.items():
        print(f"{args.split}_{name}: {value:.4f}")
    return 0


def cmd_models(args) -> int:
    from skillops.tracking import registry
    from skillops.tracking.runs import client, tracking_uri
    from skillops.uris import safe_uri

    recipe = _recipe(args)
    mlflow_client = client()
    name = recipe.registered_model_name
    metric = f"test_{recipe.evaluation.primary_metric}"

    def versions(model: str) -> list:
        return sorted(mlflow_client.search_model_versions(f"name = '{model}'"), key=lambda v: int(v.version))

    candidates, served = versions(registry.candidates(name)), versions(name)
    if not candidates and not served:
        print(f"No versions of {name!r} in {safe_uri(tracking_uri())}.")
        return 0
    champion = registry.champion_version(name)
    print(f"{name}: the served model, every version a champion once (@champion = v{champion or '-'})")
    print(f"{'version':>7}  {'aliases':10} {metric:>12}  {'candidate':>9}  promoted by")
    for version in served:
        tags = version.tags
        alias = "champion" if str(version.version) == champion else "-"
        # A served version the gate did not make (no candidate it copies) is named as such.
        origin = tags.get(registry.CANDIDATE_TAG, "NOT FROM THE GATE")
        print(
            f"{version.version:>7}  {alias:10} {tags.get(metric, '-'):>12}  {origin:>9}  {tags.get('skillops.decision_by', '-')}"
        )
    print(f"\n{registry.candidates(name)}: every candidate and the gate's decision")
    print(f"{'version':>7}  {metric:>12}  {'served as':>9}  {'variant':7}  {'ESCO':10}  decision")
    for version in candidates:
        tags = version.tags
        print(
            f"{version.version:>7}  {tags.get(metric, '-'):>12}  {tags.get(registry.SERVED_TAG, '-'):>9}  "
            f"{tags.get('skillops.served_variant', 'fp32'):7}  {tags.get('skillops.esco_version', '-').split(' (')[0]:10}  "
            f"{tags.get('skillops.decision', 'not judged')}: {tags.get('skillops.decision_reason', '')}"
        )
    return 0


def cmd_rollback(args) -> int:
    from skillops.errors import RollbackError
    from skillops.gate import connect

    recipe = _recipe(args)
    try:
        moved_from, moved_to = connect().rollback(recipe.registered_model_name, args.reason, args.to)
    except RollbackError as error:  # nothing to roll back to: not a usage error
        print(f"skillops rollback: {error}", file=sys.stderr)
        return 1
    print(f"{recipe.registered_model_name}: champion moved back from version {moved_from} to {moved_to}.")
    return 0


def cmd_history(args) -> int:
    from skillops.gate import connect

    name = _recipe(args).registered_model_name
    moves = connect().history(name)
    if not moves:
        print(f"{name}: the champion alias has never moved.")
        return 0
    for move in moves:
        numbers = move.get("numbers")
        detail = (
            f" [{numbers['metric']} {numbers['candidate']:.4f} vs {numbers['reference_name']} {numbers['reference']:.4f}, p={numbers['p_value']}]"
            if numbers
            else ""
        )
        by = f" by {move['by']}" if move.get("by") else ""
        print(f"{move['when']}  {move['kind']:9} v{move['from'] or '-'} -> v{move['to']}{by}  {move['why']}{detail}")
    return 0


def cmd_policy(args) -> int:
    import json

    from skillops.config import parse_overrides
    from skillops.errors import PolicyError
    from skillops.gate import connect

    recipe = _recipe(args)
    name = recipe.registered_model_name
    gate = connect()
    if args.set or args.from_recipe:
        try:
            change = gate.change_policy(
                name,
                args.reason,
                fields=parse_overrides(args.set or []),
                recipe=args.recipe if args.from_recipe else None,
            )
        except PolicyError as error:  # a bad value, an unknown field, no reason
            print(f"skillops policy: {error}", file=sys.stderr)
            return 2
        print(f"{name}: policy changed by {change['by']} ({args.reason}).")
    try:
        current = gate.policy(name)
    except PolicyError as error:  # malformed: one line that says how to repair it
        print(f"skillops policy: {error}", file=sys.stderr)
        current = None
    if current is None:
        print(f"{name} has no policy: its first promotion stores the recipe's as written.")
    else:
        print(f"{name} judges its candidates by:")
        print(json.dumps(current.model_dump(mode="json"), indent=1))
    for change in gate.policy_changes(name):
        print(f"{change['when']}  changed by {change['by']}: {change['why']}")
    return 0 if current is not None else 1


def cmd_users(args) -> int:
    from skillops.stack import accounts

    stack_dir = Path(args.stack_dir).resolve()
    if args.action == "setup":
        moved = accounts.setup(stack_dir)
        print(
            f"Roles {', '.join(accounts.ROLES)} are on the tracking server; the admin's folder is {stack_dir / 'accounts' / 'admin'}."
        )
        if moved:
            print(
                f"The stack's address or CA changed: the folders of {', '.join(moved)} were rewritten for it (same "
                f"passwords); copy each to its machine again ({stack_dir / 'accounts'}/NAME)."
            )
    elif args.action == "add":
        if not args.name or not args.role:
            print("skillops users add: give a NAME and --role (reader, maintainer or pipeline).", file=sys.stderr)
            return 2
        folder = accounts.add(stack_dir, args.name, args.role)
        print(f"Account {args.name} ({args.role}): its folder is {folder} (credentials mode 600).")
        print(f"Copy it to that machine, then: source {folder.name}/env")
    elif args.action in ("rotate", "remove"):
        if not args.name:
            print(f"skillops users {args.action}: give the account's NAME.", file=sys.stderr)
            return 2
        if args.action == "rotate":
            folder = accounts.rotate(stack_dir, args.name)
            print(f"Account {args.name}: new password, the old one is refused from now on. Its folder {folder}")
            print("was rewritten: copy it to that machine again.")
            return 0
        holders = accounts.remove(stack_dir, args.name)
        print(f"Account {args.name} removed: refused from now on; its runs and records keep its name.")
        if holders:
            print(
                f"It held Prefect's shared credential, which is replaced for {', '.join(holders)}: their folders "
                "were rewritten (copy each to its machine again), and the Prefect server takes the new credential "
                "when the stack restarts (make stack-down && make stack-up TEAM=1 on this machine)."
            )
    else:
        for name, roles in accounts.users(stack_dir):
            print(f"{name:24} {', '.join(roles) or '-'}")
    return 0


def cmd_webhooks(args) -> int:
    from skillops.tracking import webhooks

    secret_file = Path(args.secret_file)
    if args.action == "add":
        if not args.url:
            print("skillops webhooks add: give --url, the receiver's address.", file=sys.stderr)
            return 2
        webhook_id = webhooks.add(args.url, secret_file.read_text("utf-8").strip())
        print(f"Webhook {webhooks.NAME} ({webhook_id}): the tracking server posts every champion move to {args.url}.")
        return 0
    server = webhooks.listen(args.host, args.port, secret_file, on_move=lambda line: print(line, flush=True))
    print(f"Listening on http://{args.host}:{args.port}/ for champion moves (signed with {secret_file}).", flush=True)
    server.serve_forever()
    return 0


def cmd_settings(args) -> int:
    import textwrap

    from skillops.settings import describe

    for variable, value, why in describe():
        print(f"{variable}={value}")
        print(textwrap.indent(textwrap.fill(why, 96), "    "))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skillops",
        description="Single stages of the skillops pipeline. The whole pipeline is the Prefect "
        "flow: python flows/train_esco.py [recipe], or prefect deployment run train-esco/<name>.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def add(name: str, handler, help_text: str, recipe: bool = True):
        command = commands.add_parser(name, help=help_text, description=help_text)
        if recipe:
            command.add_argument(
                "recipe",
                nargs="?",
                default=DEFAULT_RECIPE,
                help=f"built-in recipe name or path to a recipe file, YAML or TOML (default: {DEFAULT_RECIPE})",
            )
        command.set_defaults(handler=handler)
        return command

    add("recipes", cmd_recipes, "List the built-in recipes.", recipe=False)
    add(
        "settings",
        cmd_settings,
        "Every SKILLOPS_* environment variable: its value here and what it is for.",
        recipe=False,
    )
    validate = add(
        "validate",
        cmd_validate,
        "Check a recipe's data, or a data file or ESCO folder, against its suites and checks; exit 1 if a rule fails.",
    )
    validate.add_argument(
        "--shape",
        choices=["pairs", "triplets", "scored_pairs"],
        help="shape of a bare data file (default: guessed from its columns)",
    )
    validate.add_argument(
        "--columns",
        metavar="NAME=COLUMN,...",
        help="map a bare file's columns to skillops' names, e.g. anchor=job_description,positive=skill",
    )
    validate.add_argument("--html", metavar="FILE", help="also write the report as an HTML page")
    evaluate = add("evaluate", cmd_evaluate, "Score a model on the recipe's held-out validation or test set.")
    evaluate.add_argument(
        "--model",
        required=True,
        help="a model folder, a Hugging Face id, or a registry URI such as models:/esco-occupation-skills@champion",
    )
    evaluate.add_argument(
        "--split",
        default="test",
        help="validation, test, or golden-<name> for a golden set of the recipe (default: test)",
    )
    add("models", cmd_models, "List registered versions, their aliases and promotion decisions.")
    rollback = add("rollback", cmd_rollback, "Move the champion alias back to the version it replaced.")
    rollback.add_argument("--reason", default="manual rollback", help="recorded on both versions")
    rollback.add_argument(
        "--to", metavar="VERSION", help="a version that was champion before (default: the one replaced)"
    )
    add(
        "history", cmd_history, "Every move of the champion alias: from, to, when, who, why and the decision's numbers."
    )
    policy = add("policy", cmd_policy, "The promotion policy stored with the served model, and its changes.")
    policy.add_argument(
        "--set",
        action="append",
        metavar="FIELD=VALUE",
        help="change a field of the policy, e.g. --set significance_level=0.01 (a maintainer's account; repeatable)",
    )
    policy.add_argument(
        "--from-recipe",
        action="store_true",
        help="set the whole policy from the recipe as written: how a model moves to another evaluator or metric, "
        "and how a lost or malformed policy is repaired",
    )
    policy.add_argument("--reason", default="changed by hand", help="recorded with the change")
    users = commands.add_parser(
        "users",
        help="Accounts of the team stack's tracking server (on the server machine, as its admin).",
        description="Accounts of the team stack's tracking server: `setup` the roles, `add` an account "
        "(its password is generated into a mode-600 file of its folder), `list` them, `rotate` one's "
        "password, `remove` one (a leaver). Run on the server machine with the admin's credentials "
        "(source .stack/env).",
    )
    users.add_argument("action", choices=["setup", "add", "list", "rotate", "remove"])
    users.add_argument("name", nargs="?", help="the account to add, rotate or remove, e.g. alice or worker-gpu1")
    users.add_argument("--role", choices=["reader", "maintainer", "pipeline"], help="what the account may do")
    users.add_argument("--stack-dir", default=".stack", help="the team stack's state folder (default .stack)")
    users.set_defaults(handler=cmd_users)
    hooks = commands.add_parser(
        "webhooks",
        help="Tell the systems downstream when the champion moves (an MLflow webhook and its receiver).",
        description="`add` registers the tracking server's webhook on every move of a served model's champion "
        "alias (the admin's account); `listen` runs a receiver that checks each delivery's signature and prints "
        "what to re-index.",
    )
    hooks.add_argument("action", choices=["add", "listen"])
    hooks.add_argument("--url", help="add: where the receiver listens")
    hooks.add_argument("--secret-file", required=True, help="the webhook's shared secret (a mode-600 file)")
    hooks.add_argument("--host", default="127.0.0.1", help="listen: the address to listen on (default 127.0.0.1)")
    hooks.add_argument("--port", type=int, default=8765, help="listen: the port (default 8765)")
    hooks.set_defaults(handler=cmd_webhooks)
    return parser


def main(argv: list[str] | None = None) -> int:
    from skillops.errors import SkillopsError

    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except SkillopsError as error:
        print(f"skillops {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
