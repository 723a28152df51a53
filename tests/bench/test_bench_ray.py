"""``--executor ray`` on a local Ray instance: the same records as a local sweep, written by the driver
(no shared filesystem needed), and an interrupted sweep resumes without redoing finished runs."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")

from synthetic import tiny_sweep  # noqa: E402

from rkopt.bench import sweep as sweep_module  # noqa: E402
from rkopt.bench.records import RESULT, load_results, publish_run, run_directory  # noqa: E402
from rkopt.bench.sweep import run_sweep  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the module (its start-up takes seconds), shut down at the end."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _without_times(run):
    return [{k: v for k, v in m.items() if k != "time"} for m in run.metrics]


def test_ray_tasks_give_the_records_of_the_local_pool(tmp_path, environment, local_ray, pooled_sweep):
    config = tiny_sweep()  # 2 runs, also run by the local pool (2 worker processes) in `pooled_sweep`
    remote = run_sweep(config, tmp_path, environment, progress=False, executor="ray")
    assert (remote.total, remote.completed, remote.failed) == (2, 2, [])
    for run in config.runs():
        (a,), (b,) = (load_results(run_directory(d, run)) for d in (tmp_path, pooled_sweep))
        assert _without_times(a) == _without_times(b) and len(a.metrics) == 3
        assert a.result["status"] == "completed" and a.result["grad_evals"] == 24
        assert {k: v for k, v in a.result.items() if "seconds" not in k and k != "final"} == {
            k: v for k, v in b.result.items() if "seconds" not in k and k != "final"
        }
        assert a.manifest["config"] == b.manifest["config"] and a.manifest["run_id"] == run.run_id
    assert not list(tmp_path.rglob("*.partial"))
    assert ray.is_initialized()  # a session started by someone else is left running


def test_an_interrupted_ray_sweep_resumes_without_redoing_finished_runs(
    tmp_path, environment, local_ray, monkeypatch
):
    config = tiny_sweep()
    published: list[str] = []

    def publish_then_interrupt(run_dir, files):
        publish_run(run_dir, files)
        published.append(run_dir.name)
        raise KeyboardInterrupt  # as if ^C right after the first result came back

    monkeypatch.setattr(sweep_module, "publish_run", publish_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(config, tmp_path, environment, progress=False, executor="ray")
    monkeypatch.undo()
    (first,) = load_results(tmp_path)
    assert [first.path.name] == published
    stamp = (first.path / RESULT).stat().st_mtime_ns

    summary = run_sweep(config, tmp_path, environment, progress=False, executor="ray")
    assert (summary.total, summary.already_finished, summary.completed, summary.failed) == (2, 1, 1, [])
    assert len(load_results(tmp_path)) == 2
    assert (first.path / RESULT).stat().st_mtime_ns == stamp  # the finished run was not redone
