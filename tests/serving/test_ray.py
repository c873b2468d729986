"""``ptv2 serve --ray`` without a cluster: the one-line error without Ray installed, the option checks,
and the ``serve run`` / ``serve deploy`` app builder's parsing (the real deployment: test_ray_slow.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ptuning_v2.cli.main import main
from ptuning_v2.config import ConfigError


def test_ray_without_ray_installed_says_how_to_install_it(monkeypatch, capsys, tmp_path: Path) -> None:
    # None in sys.modules makes `import ray` fail exactly as it does when Ray is not installed.
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.serve", None)
    assert main(["serve", "--ray", "--replicas", "2", "--prompts", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("ptv2 serve: error: --ray needs Ray Serve") and "\n" not in error
    assert error.endswith("pip install -e '.[ray]'")


def test_ray_options_without_ray_are_refused(capsys, tmp_path: Path) -> None:
    assert main(["serve", "--replicas", "2", "--prompts", str(tmp_path)]) == 2
    assert "need --ray" in capsys.readouterr().err


def test_app_builder_takes_serve_options_and_refuses_bad_ones(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    from ptuning_v2.serving.ray_app import app_builder

    (tmp_path / "a").mkdir()
    app = app_builder(
        {"prompts": f"{tmp_path}/a,{tmp_path}/b", "names": "x,y", "replicas": 2, "no_batching": True}
    )
    deployment = app._bound_deployment  # Ray Serve has no public getter for an application's deployment
    assert deployment.num_replicas == 2 and deployment.ray_actor_options == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert deployment.max_ongoing_requests == 64 and deployment.max_queued_requests == 1024
    tasks, model, device, config = deployment.init_args
    assert tasks == {"x": str(tmp_path / "a"), "y": str(tmp_path / "b")} and model is None and device is None
    assert config.batching is False and config.max_batch_size == 32
    with pytest.raises(ConfigError, match="--replicas: expected a positive number"):
        app_builder({"prompts": [str(tmp_path)], "replicas": 0})
    with pytest.raises(ConfigError, match="unrecognized arguments: --bogus"):
        app_builder({"prompts": [str(tmp_path)], "bogus": 1})
    with pytest.raises(ConfigError, match=r"\['port'\] belong to the Serve config"):
        app_builder({"prompts": [str(tmp_path)], "port": 9000})
    with pytest.raises(ConfigError, match="--names: 1 names for 2"):
        app_builder({"prompts": ["a", "b"], "names": ["x"]})


def test_ray_checks_host_and_store_before_ray(monkeypatch, capsys, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    assert main(["serve", "--ray", "--prompts", str(tmp_path), "--host", "0.0.0.0"]) == 2
    assert "has no --api-keys" in capsys.readouterr().err
    assert main(["serve", "--ray", "--store", str(tmp_path / "missing")]) == 2
    assert f"--store {tmp_path / 'missing'}: not a folder" in capsys.readouterr().err


def test_app_builder_passes_store_and_keys_to_the_replicas(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    from ptuning_v2.serving.ray_app import app_builder

    keys = tmp_path / "keys.yaml"
    keys.write_text("keys:\n  - {name: ops, key: admin-secret-0123456789, role: admin}\n", encoding="utf-8")
    app = app_builder({"store": str(tmp_path), "api_keys": str(keys), "max_loaded_tasks": 7})
    _, _, _, config = app._bound_deployment.init_args
    assert config.store == str(tmp_path.resolve()) and config.max_loaded_tasks == 7
    assert [k.name for k in config.api_keys.keys] == ["ops"]  # parsed once; replicas get digests only
