"""Model roots: where a local `model.source` may be read from (the checkout, the policy's model_roots and
LLMRELEASE_MODEL_ROOTS), with real directories, files and symlinks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from registry.errors import OnboardingError, SpecError
from steps.onboarding.sources import MODEL_ROOTS_ENV, model_roots, resolve_source
from steps.release.policy import load_policy
from tests.unit.test_spec import REPO


@pytest.fixture
def places(tmp_path: Path) -> dict[str, Path]:
    """A checkout with a model, a shared model store outside it with a model, and a third directory with one."""
    out = {name: tmp_path / name for name in ("checkout", "store", "elsewhere")}
    for name, path in out.items():
        (path / "m").mkdir(parents=True)
        (path / "m" / "config.json").write_text(f'{{"from": "{name}"}}')
    return out


def _resolve(source: str, places: dict[str, Path], roots: list[Path] | None = None) -> Path | None:
    got = resolve_source(source, root=places["checkout"], work_dir=places["checkout"] / "work", roots=roots)
    return got.local_dir


def test_relative_sources_resolve_in_the_checkout_and_absolute_ones_in_a_configured_root(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN LLMRELEASE_MODEL_ROOTS naming the store
    WHEN a relative source and an absolute source in the store are resolved
    THEN both are accepted, each hashed from its own directory."""
    monkeypatch.setenv(MODEL_ROOTS_ENV, str(places["store"]))
    assert _resolve("m", places) == (places["checkout"] / "m").resolve()
    assert _resolve(str(places["store"] / "m"), places) == (places["store"] / "m").resolve()
    got = resolve_source(str(places["store"] / "m"), root=places["checkout"], work_dir=places["checkout"])
    assert [f.path for f in got.files] == ["config.json"]


def test_an_absolute_source_outside_every_root_is_refused_naming_the_settings(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN no configured root, then the store as one
    WHEN a source in `elsewhere` is resolved
    THEN it is refused in one line naming the roots, LLMRELEASE_MODEL_ROOTS and the policy's model_roots."""
    monkeypatch.delenv(MODEL_ROOTS_ENV, raising=False)
    for roots in (None, model_roots(places["checkout"], [str(places["store"])])):
        with pytest.raises(OnboardingError) as info:
            _resolve(str(places["elsewhere"] / "m"), places, roots)
        message = str(info.value)
        assert "\n" not in message and "is outside every model root" in message
        assert MODEL_ROOTS_ENV in message and "model_roots" in message and str(places["checkout"].resolve()) in message
    assert _resolve(str(places["store"] / "m"), places, model_roots(places["checkout"], [str(places["store"])]))


def test_a_symlink_from_a_root_to_outside_it_and_a_relative_escape_are_refused(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN the store as a root, holding a symlink to a model in `elsewhere`
    WHEN the link, and '../elsewhere/m' relative to the checkout, are resolved
    THEN the first is refused as leading outside the store, the second as escaping the checkout."""
    monkeypatch.setenv(MODEL_ROOTS_ENV, f"{places['store']}{os.pathsep}")
    (places["store"] / "link").symlink_to(places["elsewhere"] / "m")
    with pytest.raises(OnboardingError, match="leads through a symlink .* outside the model root"):
        _resolve(str(places["store"] / "link"), places)
    with pytest.raises(OnboardingError, match="escapes the model root"):
        _resolve("../elsewhere/m", places)


def test_model_roots_settings_must_be_absolute(tmp_path: Path, places: dict[str, Path]) -> None:
    """GIVEN a relative entry in LLMRELEASE_MODEL_ROOTS, and a relative model_roots entry in the policy
    WHEN read THEN each is refused in one line naming the setting."""
    with pytest.raises(OnboardingError, match=f"^{MODEL_ROOTS_ENV}: 'models' is not an absolute path"):
        model_roots(places["checkout"], environ={MODEL_ROOTS_ENV: f"/abs{os.pathsep}models"})
    raw = yaml.safe_load((REPO / "policy" / "platform-policy.yaml").read_text())
    raw["environments"]["dev"]["model_roots"] = ["/srv/models", "models"]
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError, match=r"environments\.dev\.model_roots: Value error, model roots must be absolute"):
        load_policy(path)
    raw["environments"]["dev"]["model_roots"] = ["/srv/models"]
    path.write_text(yaml.safe_dump(raw))
    assert load_policy(path).environment("dev").model_roots == ["/srv/models"]
    roots = model_roots(places["checkout"], ["/srv/models"], environ={})
    assert roots == [places["checkout"].resolve(), Path("/srv/models")]
