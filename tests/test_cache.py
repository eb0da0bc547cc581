"""The persistent compilation cache: on at the first entry-point call, off when opted out,
never over a directory the user chose; and a second process reuses what the first compiled."""

import os
import pickle
import subprocess
import sys
from pathlib import Path

from _procs import env as proc_env

from unijax import _cache

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


# ---------------------------------------------------------------------------------------------
# Trust: nothing read from the cache directory runs as Python; only a private directory is used
# ---------------------------------------------------------------------------------------------

_FIT = (
    "import jax, numpy as np; jax.config.update('jax_enable_x64', True); "
    "from unijax import fit; ts = np.arange(200.0); "
    "Z = np.stack([0.05 * np.exp(-ts / 400), 1e-3 + ts * 1e-5, -1e-3 - ts * 1e-5], 1); "
    "r = fit.fit_rates(ts, Z, dx2=1.0, dy2=0.5, return_trajectory=False); "
    "r = fit.fit_rates(ts[:150], Z[:150], dx2=1.0, dy2=0.5, return_trajectory=False); "
    "print('STATUS', int(r.status), 'DIR', jax.config.jax_compilation_cache_dir)"
)


def _fit_child(env_extra, tmp_path):
    e = proc_env()
    for k in ("JAX_COMPILATION_CACHE_DIR", "UNIJAX_NO_COMPILATION_CACHE", "UNIJAX_CACHE_DIR",
              "XDG_CACHE_HOME"):
        e.pop(k, None)
    e.update({"XDG_CACHE_HOME": str(tmp_path / "xdg"), **env_extra})
    p = subprocess.run([sys.executable, "-c", _FIT], env=e, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    return p


class _Payload:
    """Unpickling this runs ``code``: what an attacker would leave in a shared cache."""

    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


def test_a_crafted_file_in_the_cache_never_runs(tmp_path):
    cache = tmp_path / "cache"
    marker = tmp_path / "ran"
    blob = pickle.dumps(_Payload(f"open({str(marker)!r}, 'w').write('pwned')"))
    # Where earlier versions loaded pickled programs from, and JAX's own directory.
    for d in (cache / "unijax_programs", cache):
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name in ("fit-" + "0" * 32 + ".pkl", "fit-evil.pkl", "jit__fit_batch-evil"):
            (d / name).write_bytes(blob)
    p = _fit_child({"UNIJAX_CACHE_DIR": str(cache)}, tmp_path)
    assert not marker.exists()
    assert "DIR " + str(cache) in p.stdout  # the cache was used, and the payload never ran


def test_a_group_writable_cache_is_refused_with_one_message(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o775)
    p = _fit_child({"UNIJAX_CACHE_DIR": str(shared)}, tmp_path)
    assert "DIR None" in p.stdout  # JAX's cache left off too
    lines = [ln for ln in p.stderr.splitlines() if "compilation cache off" in ln]
    assert len(lines) == 1, p.stderr  # two fits, one message
    assert str(shared) in lines[0] and "writable by group" in lines[0]
    assert not any(shared.iterdir())


def test_unsafe_reason_checks_the_directory_and_its_parents(tmp_path):
    private = tmp_path / "a" / "b"
    private.mkdir(parents=True)
    for d in (tmp_path / "a", private):
        d.chmod(0o700)
    tmp_path.chmod(0o700)
    assert _cache.unsafe_reason(private) is None  # /tmp above: root's, sticky
    (tmp_path / "a").chmod(0o707)
    assert "writable by others" in _cache.unsafe_reason(private)
    (tmp_path / "a").chmod(0o700)
    private.chmod(0o720)
    assert "writable by group" in _cache.unsafe_reason(private)
    private.chmod(0o700)
    if os.geteuid() == 0:  # only root can hand a directory to another user
        os.chown(private, 12345, -1)
        assert "owned by uid 12345" in _cache.unsafe_reason(private)
    f = tmp_path / "file"
    f.write_text("")
    assert "not a directory" in _cache.unsafe_reason(f)


def test_cache_variables_follow_their_specs(monkeypatch, tmp_path):
    monkeypatch.delenv("UNIJAX_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "rel/cache")  # relative: ignored (XDG spec)
    assert _cache.cache_dir() == Path.home() / ".cache" / "unijax" / "jax"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert _cache.cache_dir() == tmp_path / "unijax" / "jax"
    monkeypatch.setenv("UNIJAX_CACHE_DIR", "gs://bucket/cache")  # a URL stays a URL
    assert _cache.cache_dir() == "gs://bucket/cache"
    monkeypatch.setenv("UNIJAX_CACHE_DIR", "rel/dir")
    assert _cache.cache_dir() == Path.cwd() / "rel" / "dir"


def test_no_home_directory_leaves_the_cache_off_with_a_message(tmp_path):
    code = ("import pathlib\n"
            "def nohome(): raise RuntimeError('Could not determine home directory.')\n"
            "pathlib.Path.home = staticmethod(nohome)\n"
            "from unijax import _cache\n"
            "print('DIR', _cache.enable_compilation_cache())\n")
    e = proc_env()
    for k in ("JAX_COMPILATION_CACHE_DIR", "UNIJAX_NO_COMPILATION_CACHE", "UNIJAX_CACHE_DIR",
              "XDG_CACHE_HOME"):
        e.pop(k, None)
    p = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "DIR None" in p.stdout
    assert "home directory cannot be determined" in p.stderr


def test_the_exported_programs_directory_is_private_and_follows_the_cache(monkeypatch, tmp_path,
                                                                          capsys):
    import jax

    before = jax.config.jax_compilation_cache_dir
    monkeypatch.delenv("UNIJAX_NO_COMPILATION_CACHE", raising=False)
    tmp_path.chmod(0o700)
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        assert _cache.program_dir() is None  # JAX's cache off: no exports either
        jax.config.update("jax_compilation_cache_dir", "gs://bucket/cache")
        assert _cache.program_dir() is None  # never under a URL
        mine = tmp_path / "mine"
        jax.config.update("jax_compilation_cache_dir", str(mine))
        d = _cache.program_dir()
        assert d == mine / "unijax_exports" and d.stat().st_mode & 0o777 == 0o700
        monkeypatch.setenv("UNIJAX_NO_COMPILATION_CACHE", "1")
        assert _cache.program_dir() is None
        monkeypatch.delenv("UNIJAX_NO_COMPILATION_CACHE")
        # A directory the user chose for JAX is JAX's business; unijax's exports in it must
        # pass the ownership check.
        shared = tmp_path / "shared"
        shared.mkdir()
        shared.chmod(0o775)
        jax.config.update("jax_compilation_cache_dir", str(shared))
        assert _cache.program_dir() is None and _cache.program_dir() is None
        err = capsys.readouterr().err
        assert err.count("stored fit programs off") == 1 and "writable by group" in err
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


def test_the_command_stores_every_program_unless_the_user_chose(monkeypatch):
    import jax

    before = jax.config.jax_persistent_cache_min_compile_time_secs
    try:
        monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", raising=False)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
        _cache.store_every_program()
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
        monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "2")
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)
        _cache.store_every_program()
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 2.0
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", before)
