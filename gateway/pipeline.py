"""A rule's actions on one instance: de-identify, then modify, then transcode.

Built from the action spec a rule had when it routed the instance (stored with the job),
so a delivery made after a rules reload still does what was decided. The worker runs it
on a copy read from the durable original; `rules test` runs it on a file and shows the
changes. Everything an action cannot do for an instance raises ActionError with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import Dataset

from gateway.changes import Change
from gateway.config import Config

PROFILE_KEYS = {"profile", "recipe"}


class ActionError(ValueError):
    """An action spec that cannot be used, or an action an instance cannot take."""


@dataclass(frozen=True)
class ActionEnv:
    """What actions need beyond their spec: where relative files are, and the secret."""

    rules_dir: Path
    secret: bytes | None = None
    pseudonym_db: Path | None = None


Step = Callable[[Dataset], list[Change]]


def action_env(cfg: Config) -> ActionEnv:
    """The environment of a configuration: its rules folder, secret and pseudonym store."""
    secret = cfg.deidentify.secret.encode() if cfg.deidentify.secret else None
    return ActionEnv(cfg.rules_dir, secret, cfg.data_dir / "pseudonyms.db")


def validate(spec: Mapping[str, Any], rules_dir: Path, deid_secret: bool) -> None:
    """Check a rule's actions when the rules load, without running them."""
    deid = spec.get("deidentify")
    if deid is not None and not _is_recipe(deid) and not deid_secret:
        raise ActionError(
            "deidentify: config.yaml needs deidentify.secret (or GATEWAY__DEIDENTIFY__SECRET)"
            " for consistent pseudonyms"
        )
    Pipeline(spec, ActionEnv(rules_dir, b"validation only"), check_only=True).close()


def _is_recipe(deid: Any) -> bool:
    return isinstance(deid, dict) and "recipe" in deid


class Pipeline:
    def __init__(self, spec: Mapping[str, Any], env: ActionEnv, *, check_only: bool = False):
        self._steps: list[tuple[str, Step]] = []
        self._closers: list[Callable[[], None]] = []
        if "deidentify" in spec:
            self._steps.append(
                ("deidentify", self._deidentify(spec["deidentify"], env, check_only))
            )
        if "modify" in spec:
            from gateway import modify

            try:
                ops = modify.parse(spec["modify"], env.rules_dir)
            except modify.ModifyError as exc:
                raise ActionError(str(exc)) from None
            self._steps.append(("modify", lambda ds: modify.apply(ops, ds)))
        if "transcode" in spec:
            self._steps.append(("transcode", _transcode(spec["transcode"])))

    def _deidentify(self, raw: Any, env: ActionEnv, check_only: bool) -> Step:
        if not isinstance(raw, dict):
            raise ActionError("deidentify: expected a mapping, e.g. {options: [retain_uids]}")
        if _is_recipe(raw):
            return self._recipe(raw, env, check_only)
        from gateway import deidentify

        settings_raw = {k: v for k, v in raw.items() if k != "profile"}
        if raw.get("profile", "basic") != "basic":
            raise ActionError("deidentify.profile: only 'basic' (PS3.15 Annex E) is built in")
        try:
            settings = deidentify.parse_settings(settings_raw)
        except ValueError as exc:
            raise ActionError(f"deidentify: {exc}") from None
        if check_only:
            return lambda ds: []
        if env.secret is None:
            raise ActionError("deidentify: no secret configured")
        store = None
        if env.pseudonym_db is not None:
            store = deidentify.PseudonymStore(env.pseudonym_db, env.secret)
            self._closers.append(store.close)
        engine = deidentify.Deidentifier(settings, env.secret, store)
        return engine.apply

    def _recipe(self, raw: dict, env: ActionEnv, check_only: bool) -> Step:
        from gateway import deid_recipe

        if set(raw) != {"recipe"}:
            raise ActionError("deidentify: a recipe takes no other keys: {recipe: FILE}")
        path = env.rules_dir / str(raw["recipe"])
        try:
            deid_recipe.validate_recipe(path)
        except deid_recipe.RecipeError as exc:
            raise ActionError(f"deidentify.recipe: {exc}") from None
        if check_only:
            return lambda ds: []
        runner = deid_recipe.RecipeRunner(path)
        self._closers.append(runner.close)

        def step(ds: Dataset) -> list[Change]:
            try:
                return [Change(d, "recipe", None, None) for d in runner.apply(ds)]
            except deid_recipe.RecipeError as exc:
                raise ActionError(f"deidentify.recipe: {exc}") from None

        return step

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self._steps]

    def apply(self, ds: Dataset) -> dict[str, list[Change]]:
        """Run every step in place; the changes per step (for logs and the dry run)."""
        out = {}
        for name, step in self._steps:
            try:
                out[name] = step(ds)
            except ActionError:
                raise
            except Exception as exc:  # a library failing on odd data: this instance's error
                raise ActionError(f"{name}: {type(exc).__name__}: {exc}") from exc
        return out

    def close(self) -> None:
        for close in self._closers:
            close()
        self._closers.clear()


def _transcode(raw: Any) -> Step:
    from gateway import transcode

    try:
        spec = transcode.parse_spec(raw)
    except ValueError as exc:
        raise ActionError(f"transcode: {exc}") from None

    def step(ds: Dataset) -> list[Change]:
        before = str(ds.file_meta.get("TransferSyntaxUID", ""))
        try:
            transcode.transcode(ds, spec)
        except transcode.TranscodeError as exc:
            raise ActionError(f"transcode: {exc}") from None
        after = str(ds.file_meta.TransferSyntaxUID)
        if after == before:
            return []
        return [Change("TransferSyntaxUID (0002,0010)", "replaced", before, after)]

    return step
