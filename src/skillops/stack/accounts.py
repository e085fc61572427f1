"""Accounts and roles of the team stack's tracking server (MLflow's basic-auth app).

Four kinds of account, each an MLflow role, and the promotion authority's own account:

| role | MLflow: may | the promotion authority: may ask | Prefect |
|---|---|---|---|
| admin | everything (the stack owner; MLflow's own admin) | everything | yes |
| pipeline | read everything; create runs in its recipes' experiments (EDIT on each, granted by the authority when it opens one) and candidates in `<name>-candidates` (EDIT on each); create experiments | open a model, judge a candidate | yes |
| maintainer | read everything | roll back, change a policy (with a reason) | yes |
| reader | read runs, compare them in the UI, load and serve `models:/<name>@champion` | nothing (reads its record) | no |

Nobody but the authority's account (`GATE_ACCOUNT`, a workspace admin whose password never leaves
the server machine) and the admin writes a served model: its versions, its `@champion`, its
name, its tags. Unknown users get nothing (`default_permission = NO_PERMISSIONS`); only a role
with the workspace's USE may create anything (the server runs with MLFLOW_ENABLE_WORKSPACES).
Prefect has one shared credential and no roles: whoever holds it can start any deployment, so it
goes to the pipeline and the maintainers only.

`add` writes an account's folder under STATE/accounts/<name>: `credentials` (mode 600: the
MLflow password, and the Prefect auth string where the role has it), `ca.crt`, `env` (the URLs,
the CA and the promotion authority's address, and it reads `credentials` when sourced) and, for
the pipeline, `pgpass` with the password of the Optuna database. Copy the folder to the account's
machine; nothing in it is printed. Needs the admin's credentials (MLFLOW_TRACKING_USERNAME /
_PASSWORD in the environment).
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

ROLES: dict[str, list[tuple[str, str, str]]] = {
    "pipeline": [
        ("workspace", "*", "USE"),  # creates experiments (its recipes' are opened by the authority)
        ("experiment", "*", "READ"),
        ("registered_model", "*", "READ"),
    ],
    "maintainer": [("experiment", "*", "READ"), ("registered_model", "*", "READ")],
    "reader": [("experiment", "*", "READ"), ("registered_model", "*", "READ")],
}
# The roles whose members hold Prefect's shared credential.
PREFECT_ROLES = ("admin", "pipeline", "maintainer")
WORKSPACE = "default"
# The promotion authority's account: a workspace admin (it makes served models and grants the
# pipeline's role EDIT on each model's candidates), its password in STATE/secrets/gate-account.
GATE_ACCOUNT = "skillops-gate"


def _role_name(role: str) -> str:
    return f"skillops-{role}"


def _admin(stack: dict):
    import warnings

    with warnings.catch_warnings():  # the server's own modules warn about their imports; not ours
        warnings.simplefilter("ignore")
        from mlflow.server import get_app_client

        # On the server machine, straight to the tracking server: its account routes are not
        # among those nginx lets other machines reach.
        return get_app_client("basic-auth", tracking_uri=stack.get("mlflow_backend_uri", stack["mlflow_tracking_uri"]))


def _stack(stack_dir: Path) -> dict:
    found = stack_dir / "stack.json"
    if not found.is_file():
        from skillops.errors import RecipeError

        raise RecipeError(
            f"{found} is missing: --stack-dir must be the state folder of a team stack this machine runs "
            "(`make stack-up TEAM=1` writes it; default .stack)."
        )
    return json.loads(found.read_text("utf-8"))


def setup(stack_dir: Path) -> list[str]:
    """The roles, each with its grants (idempotent), the admin's own account folder, and the
    promotion authority's account (its password only in the server machine's secrets). Account
    folders that name another address (a stack restored on another machine) or hold another CA (a
    rotated one) are rewritten for this stack: returns their names."""
    stack = _stack(stack_dir)
    admin = _admin(stack)
    existing = {role.name: role for role in admin.list_roles(WORKSPACE)}
    for role, grants in ROLES.items():
        found = existing.get(_role_name(role)) or admin.create_role(WORKSPACE, _role_name(role))
        granted = {(p.resource_type, p.resource_pattern, p.permission) for p in admin.list_role_permissions(found.id)}
        for grant in grants:
            if grant not in granted:
                admin.add_role_permission(found.id, *grant)
    gate_password = stack_dir / "secrets" / "gate-account"
    if not gate_password.is_file():
        password = secrets.token_urlsafe(24)
        admin.create_user(GATE_ACCOUNT, password)
        _private(gate_password, password)
    gate_role = existing.get(_role_name("gate")) or admin.create_role(WORKSPACE, _role_name("gate"))
    if ("workspace", "*", "MANAGE") not in {
        (p.resource_type, p.resource_pattern, p.permission) for p in admin.list_role_permissions(gate_role.id)
    }:
        admin.add_role_permission(gate_role.id, "workspace", "*", "MANAGE")
    if gate_role.name not in {role.name for role in admin.list_user_roles(GATE_ACCOUNT)}:
        admin.assign_role(GATE_ACCOUNT, gate_role.id)
    _write_account(stack_dir, stack, "admin", "admin", os.environ["MLFLOW_TRACKING_PASSWORD"])
    moved = []
    ca = (stack_dir / "tls" / "ca.crt").read_text("utf-8")
    for credentials in sorted((stack_dir / "accounts").glob("*/credentials")):
        name, folder = credentials.parent.name, credentials.parent
        address = f"export MLFLOW_TRACKING_URI={stack['mlflow_tracking_uri']}\n"
        if address not in (folder / "env").read_text("utf-8") or (folder / "ca.crt").read_text("utf-8") != ca:
            _rewrite_account(stack_dir, stack, name, _held_role(admin, stack_dir, name))
            moved.append(name)
    return moved


def _grant(admin, role: str, resource_type: str, resource: str, permission: str) -> None:
    found = next(r for r in admin.list_roles(WORKSPACE) if r.name == _role_name(role))
    granted = {(p.resource_type, p.resource_pattern) for p in admin.list_role_permissions(found.id)}
    if (resource_type, resource) not in granted:
        admin.add_role_permission(found.id, resource_type, resource, permission)


def grant_candidates(admin, model: str) -> None:
    """The pipeline's role may register versions of this candidates model (EDIT), not delete them."""
    _grant(admin, "pipeline", "registered_model", model, "EDIT")


def grant_experiment(admin, experiment_id: str) -> None:
    """The pipeline's role may create runs in this experiment (a recipe's, opened by the authority)."""
    _grant(admin, "pipeline", "experiment", experiment_id, "EDIT")


def add(stack_dir: Path, name: str, role: str) -> Path:
    """A new account with a generated password, given `role`; returns its folder."""
    stack = _stack(stack_dir)
    admin = _admin(stack)
    password = secrets.token_urlsafe(24)
    admin.create_user(name, password)
    role_id = next(r.id for r in admin.list_roles(WORKSPACE) if r.name == _role_name(role))
    admin.assign_role(name, role_id)
    return _write_account(stack_dir, stack, name, role, password)


# Accounts whose password lives in the stack's own secrets and its servers' settings: changed by
# restarting the stack with new secrets, not by these commands.
STACK_ACCOUNTS = ("admin", GATE_ACCOUNT)


def _role_of(admin, stack_dir: Path, name: str) -> str:
    if name in STACK_ACCOUNTS or not (stack_dir / "accounts" / name / "credentials").is_file():
        from skillops.errors import RecipeError

        raise RecipeError(
            f"{name!r} is not an account `skillops users add` made on this stack (see `skillops users list`)"
            + (
                ": the admin's and the promotion authority's passwords are the stack's secrets."
                if name in STACK_ACCOUNTS
                else "."
            )
        )
    roles = [r.name.removeprefix("skillops-") for r in admin.list_user_roles(name)]
    return next(role for role in ROLES if role in roles)


def rotate(stack_dir: Path, name: str) -> Path:
    """A new password for `name`: the tracking server refuses the old one from the next request on
    (it drops the account from its password cache when the password changes). Rewrites the
    account's folder, which goes to its machine again; returns it."""
    stack = _stack(stack_dir)
    admin = _admin(stack)
    role = _role_of(admin, stack_dir, name)
    password = secrets.token_urlsafe(24)
    admin.update_user_password(name, password)
    return _write_account(stack_dir, stack, name, role, password)


def remove(stack_dir: Path, name: str) -> list[str]:
    """Delete the account: the tracking server refuses it from the next request on; the runs,
    versions and records it made keep its name. Prefect has one shared credential, so when the
    account held it the credential is replaced for the remaining holders: returns their names
    (their folders are rewritten; the Prefect server takes the new one when the stack restarts)."""
    import shutil

    stack = _stack(stack_dir)
    admin = _admin(stack)
    role = _role_of(admin, stack_dir, name)
    admin.delete_user(name)
    shutil.rmtree(stack_dir / "accounts" / name)
    if role not in PREFECT_ROLES:
        return []
    _private(stack_dir / "secrets" / "prefect-auth", secrets.token_hex(24))
    holders = []
    for credentials in sorted((stack_dir / "accounts").glob("*/credentials")):
        holder = credentials.parent.name
        held_role = _held_role(admin, stack_dir, holder)
        if held_role in PREFECT_ROLES:
            _rewrite_account(stack_dir, stack, holder, held_role)
            holders.append(holder)
    return holders


def _held_role(admin, stack_dir: Path, name: str) -> str:
    """The role of an account that has a folder on this stack, the admin's own included."""
    return "admin" if name == "admin" else _role_of(admin, stack_dir, name)


def _rewrite_account(stack_dir: Path, stack: dict, name: str, role: str) -> None:
    """Write the account's folder again for this stack (address, CA, Prefect credential), keeping
    its password."""
    password = _credential(stack_dir / "accounts" / name / "credentials", "MLFLOW_TRACKING_PASSWORD")
    _write_account(stack_dir, stack, name, role, password)


def _credential(credentials: Path, key: str) -> str:
    for line in credentials.read_text("utf-8").splitlines():
        if line.startswith(f"{key}="):
            return line.split("=", 1)[1].strip("'")
    raise KeyError(f"{credentials} has no {key}")


def _private(path: Path, text: str) -> None:
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(text, "utf-8")


def _write_account(stack_dir: Path, stack: dict, name: str, role: str, password: str) -> Path:
    folder = stack_dir / "accounts" / name
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    _private(folder / "ca.crt", (stack_dir / "tls" / "ca.crt").read_text("utf-8"))
    credentials = [f"MLFLOW_TRACKING_USERNAME='{name}'", f"MLFLOW_TRACKING_PASSWORD='{password}'"]
    if role in PREFECT_ROLES:
        auth = (stack_dir / "secrets" / "prefect-auth").read_text("utf-8").strip()
        credentials.append(f"PREFECT_API_AUTH_STRING='skillops:{auth}'")
    _private(
        folder / "credentials",
        f"# skillops account {name} ({role}): keep this file private.\n" + "\n".join(credentials) + "\n",
    )
    lines = [
        f"# skillops team stack at {stack['host']}, account {name} ({role}). Source this file (bash): it",
        "# sets the addresses and the CA, and reads this folder's credentials file; it prints nothing.",
        'here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)',
        f"export MLFLOW_TRACKING_URI={stack['mlflow_tracking_uri']}",
        'export MLFLOW_TRACKING_SERVER_CERT_PATH="$here/ca.crt"',
    ]
    lines.append(f"export SKILLOPS_GATE_URL={stack['mlflow_tracking_uri'].rstrip('/')}/gate")
    if role in PREFECT_ROLES:
        lines += [
            f"export PREFECT_API_URL={stack['prefect_api_url']}",
            'export PREFECT_API_SSL_CERT_FILE="$here/ca.crt"',
        ]
    if role in ("admin", "pipeline"):
        database = (stack_dir / "secrets" / "pg-optuna").read_text("utf-8").strip()
        _private(folder / "pgpass", f"{stack['host']}:{stack['pg_port']}:optuna:skillops_optuna:{database}\n")
        lines += [
            f"export SKILLOPS_OPTUNA_STORAGE='{stack['optuna_storage']}'",
            'export PGPASSFILE="$here/pgpass" PGSSLROOTCERT="$here/ca.crt"',
        ]
    lines.append('set -a; . "$here/credentials"; set +a')
    _private(folder / "env", "\n".join(lines) + "\n")
    return folder


def users(stack_dir: Path) -> list[tuple[str, list[str]]]:
    """Every account folder of this stack and its roles on the server."""
    stack = _stack(stack_dir)
    admin = _admin(stack)
    found = []
    for folder in sorted((stack_dir / "accounts").glob("*/credentials")):
        name = folder.parent.name
        roles = (
            ["admin"] if name == "admin" else [r.name.removeprefix("skillops-") for r in admin.list_user_roles(name)]
        )
        found.append((name, roles))
    return found
