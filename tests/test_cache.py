"""The persistent compilation cache: on at the first entry-point call, off when opted out,
never over a directory the user chose; and a second process reuses what the first compiled."""

import subprocess
import sys

from _procs import env as proc_env

_TRAIN = (
    "import os, jax; from unijax import configs, train; "
    "cfg = configs.get('default', width=4, depth=2, epochs=3); "
    "train.train(cfg, seeds=1); "
    "print('DIR', jax.config.jax_compilation_cache_dir)"
)


def _run(tmp_path, **extra):
    e = proc_env()
    for k in ("JAX_COMPILATION_CACHE_DIR", "UNIJAX_NO_COMPILATION_CACHE", "UNIJAX_CACHE_DIR"):
        e.pop(k, None)  # the test's own settings only
    e.update({"XDG_CACHE_HOME": str(tmp_path / "xdg"),
              "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", **extra})
    p = subprocess.run([sys.executable, "-c", _TRAIN], env=e, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout.split("DIR ")[-1].strip()


def test_first_training_call_fills_the_user_cache_and_a_second_process_reuses_it(tmp_path):
    d = tmp_path / "xdg" / "unijax" / "jax"
    assert _run(tmp_path) == str(d)
    first = set(p.name for p in d.iterdir())
    assert first  # the training programs were stored
    _run(tmp_path)
    assert set(p.name for p in d.iterdir()) == first  # same programs: read, nothing new


def test_opting_out_leaves_jax_alone(tmp_path):
    assert _run(tmp_path, UNIJAX_NO_COMPILATION_CACHE="1") == "None"
    assert not (tmp_path / "xdg").exists()


def test_a_directory_the_user_chose_is_kept(tmp_path):
    mine = tmp_path / "mine"
    assert _run(tmp_path, JAX_COMPILATION_CACHE_DIR=str(mine)) == str(mine)
    assert any(mine.iterdir()) and not (tmp_path / "xdg").exists()
