"""End-to-end CLI runs on the tiny `digits` dataset, and the one-line error contract (exit code 2)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from neuroprint.cli import main


def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["neuroprint", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def train_digits(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], out: Path) -> str:
    """`neuroprint train` of a small-cnn on digits into checkpoint `out`; returns its stdout."""
    code, stdout, err = run(monkeypatch, capsys, "train", "-d", "digits", "-m", "small-cnn", "--epochs", "20",
                            "--lr-drop-epoch", "15", "--out", str(out))
    assert code == 0, err
    return stdout


def test_adversarial_training_resists_the_attack_it_trained_on(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from neuroprint.attacks import make_attack
    from neuroprint.data import load_dataset
    from neuroprint.models.checkpoint import load_checkpoint

    pgd = "pgd:eps=0.1,alpha=0.025,steps=5"
    train_digits(monkeypatch, capsys, tmp_path / "plain")
    code, _, err = run(monkeypatch, capsys, "train", "-d", "digits", "-m", "small-cnn", "--epochs", "20",
                       "--lr-drop-epoch", "15", "--adversarial", pgd, "--out", str(tmp_path / "robust"))
    assert code == 0, err
    test = load_dataset("digits").test
    robust_accuracy = {}
    for name in ("plain", "robust"):
        model, meta = load_checkpoint(tmp_path / name)
        adv = make_attack(pgd.replace("steps=5", "steps=20"))(model, test.x, test.y).x_adv
        robust_accuracy[name] = float((model.predict(adv) == test.y).float().mean())
    assert meta["adversarial_training"] == pgd
    assert robust_accuracy["robust"] > robust_accuracy["plain"] + 0.2, robust_accuracy
    code, _, err = run(monkeypatch, capsys, "train", "-d", "digits", "--adversarial", "pgd:eps=3")
    assert code == 2 and "eps" in err and len(err.strip().splitlines()) == 1


def test_list(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(monkeypatch, capsys, "list")
    assert code == 0
    assert "mnist" in out and "pgd" in out and "lid" in out and "mnist-net" in out


def test_fresh_process_lists_every_registry_and_exits_2_on_bad_input() -> None:
    """A new interpreter sees every registered name (registration must not depend on earlier imports)."""
    command = [sys.executable, "-m", "neuroprint"]
    listed = subprocess.run([*command, "list"], check=False, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    for name in ("mnist", "cifar10", "mnist-net", "resnet", "pgd", "jsma", "bank", "lid", "mahalanobis"):
        assert name in listed.stdout
    bad = subprocess.run([*command, "train", "-d", "nope"], check=False, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "unknown dataset 'nope'" in bad.stderr


def test_train_attack_evaluate(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ck = tmp_path / "model"
    out = train_digits(monkeypatch, capsys, ck)
    assert (ck / "model.safetensors").is_file() and "test accuracy" in out

    code, out, err = run(monkeypatch, capsys, "attack", "-c", str(ck), "-d", "digits", "-a", "fgsm", "--n", "40",
                         "--out", str(tmp_path / "adv" / "fgsm"))
    assert code == 0, err
    record = json.loads((tmp_path / "adv" / "fgsm.json").read_text())
    assert record["attack"] == "fgsm"

    report = tmp_path / "eval.json"
    code, out, err = run(monkeypatch, capsys, "evaluate", "-d", "digits", "-m", str(ck), "--detector", "lid:batch_size=50",
                         "--detector", "bank:min_effect=50",
                         "-a", "fgsm", "-a", "pgd:steps=5", "--fit-attack", "pgd:steps=5", "--n-fit", "270",
                         "--n-test", "200", "--out-dir", str(tmp_path / "eval"), "--json", str(report),
                         "--cache-dir", str(tmp_path / "cache"))
    assert code == 0, err
    assert "| lid:batch_size=50 |" in out
    data = json.loads(report.read_text())
    assert {"dataset", "seed", "versions", "git", "model", "attacks", "results"} <= set(data)
    assert 0.0 < data["model"]["clean_accuracy"] <= 1.0
    assert [a["spec"] for a in data["attacks"]] == ["fgsm", "pgd:steps=5"]
    for a in data["attacks"]:
        assert {"name", "params", "success_rate", "n_attacked", "mean_l2", "mean_linf"} <= set(a)
    assert len(data["results"]) == 4
    failed = [r for r in data["results"] if r["detector"] == "bank:min_effect=50"]
    assert len(failed) == 2 and all("selection rule" in r["error"] and r["auc"] is None for r in failed)
    assert "fit failed" in out  # a detector that cannot be fit is reported, and the run goes on
    for r in data["results"]:
        if r in failed:
            continue
        assert r["fit_attacks"] == ["pgd:steps=5"]
        assert {"detector", "attack", "auc", "tpr_at_fpr05", "fpr_at_tpr95", "n_clean", "n_adv"} <= set(r)
        assert r["error"] is None, r["error"]
        assert r["n_clean"] > 0 and r["n_adv"] > 0 and 0.0 <= r["auc"] <= 1.0
        assert r["auc_ci95"][0] <= r["auc"] <= r["auc_ci95"][1]
    assert (tmp_path / "eval" / "roc.png").stat().st_size > 0
    assert any((tmp_path / "cache" / "adv").rglob("*.safetensors"))
    assert data["command"][1:3] == ["evaluate", "-d"]  # sys.argv, recorded for the report's provenance
    html = tmp_path / "eval" / "report.html"  # beside the other outputs, from the JSON record wherever it went
    assert f"report: {html}" in out and "<table" in html.read_text() and "neuroprint evaluate -d digits" in html.read_text()


def test_robustness_reports_sr_per_attack_and_worst_case(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ck = tmp_path / "model"
    train_digits(monkeypatch, capsys, ck)
    record = tmp_path / "robustness.json"
    args = ["robustness", "-d", "digits", "-m", str(ck), "--detector", "mahalanobis", "--detector", "bank:min_effect=50",
            "--eps", "0.3", "--eps", "l2:1", "-a", "joint", "-a", "high-confidence", "--fit-attack", "pgd:steps=5",
            "--n-fit", "270", "--n-attack", "20", "--steps", "20", "--out-dir", str(tmp_path / "rob"),
            "--json", str(record), "--cache-dir", str(tmp_path / "cache")]
    code, out, err = run(monkeypatch, capsys, *args)
    assert code == 0, err
    assert "| mahalanobis | linf:0.3 |" in out and "worst case" in out and "not evaluated" in out
    data = json.loads(record.read_text())
    assert {"kind", "dataset", "seed", "versions", "git", "config", "model", "outcomes"} <= set(data)
    maha, bank = data["outcomes"]
    assert "selection rule" in bank["error"]  # a detector that cannot be fit is reported, and the run goes on
    assert set(maha["worst_case"]) == {"linf:0.3", "l2:1"} and 0.0 <= maha["fpr_test"] <= 1.0
    for attack in maha["attacks"]:
        assert 0.0 <= attack["sr"] <= attack["fooled"] <= 1.0 and attack["n"] > 0 and len(attack["curve"]) == 20
        assert attack["sr"] <= maha["worst_case"][attack["budget"]]
        params = attack["params"]  # the attack's own settings travel with its figures
        assert params["steps"] == 20 and f"{params['norm']}:{params['eps']:g}" == attack["budget"]
    assert maha["no_detector"]["linf:0.3"] >= 0.9  # the budget's attack success with no detector beside it
    assert (tmp_path / "rob" / "convergence.png").stat().st_size > 0
    assert f"report: {tmp_path / 'rob' / 'report.html'}" in out and data["command"][1] == "robustness"
    cached = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache" / "robustness").rglob("*.safetensors")}
    assert len(cached) == 4
    code, _, err = run(monkeypatch, capsys, *args)  # a rerun reuses every attack: no cache file is rewritten
    assert code == 0, err
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache" / "robustness").rglob("*.safetensors")} == cached
    assert json.loads(record.read_text())["outcomes"][0]["worst_case"] == maha["worst_case"]


def test_robustness_on_validation_images_through_the_attackers_own_copy(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ck = tmp_path / "model"
    train_digits(monkeypatch, capsys, ck)
    record = tmp_path / "robustness.json"
    common = ["robustness", "-d", "digits", "-m", str(ck), "--detector", "mahalanobis", "--eps", "0.2", "-a", "joint",
              "--fit-attack", "pgd:steps=5", "--n-fit", "200", "--n-attack", "20", "--steps", "10", "--out-dir",
              str(tmp_path / "rob"), "--cache-dir", str(tmp_path / "cache")]
    outcomes = {}
    for extra in ([], ["--attacker-seed", "1"]):
        code, out, err = run(monkeypatch, capsys, *common, "--sources", "validation", "--json", str(record), *extra)
        assert code == 0, err
        data = json.loads(record.read_text())
        outcomes[bool(extra)] = outcome = data["outcomes"][0]
        per_image = outcome["worst_case_images"]["linf:0.2"]
        assert len(per_image) == outcome["attacks"][0]["n"] and set(per_image) <= {0.0, 1.0}
        assert sum(per_image) / len(per_image) == pytest.approx(outcome["worst_case"]["linf:0.2"])
        assert data["config"]["sources"] == "validation" and "20 attacked validation images" in out
    assert data["config"]["attacker_seed"] == 1 and "attacker's own copy (seed 1)" in outcomes[True]["gradient"]
    assert outcomes[True]["threshold"] == outcomes[False]["threshold"]  # the defender's detector judges both runs


@pytest.mark.parametrize(
    "args, message",
    [
        (["robustness", "-d", "digits", "--detector", "lid", "--eps", "l3:0.3"], "unknown norm 'l3'"),
        (["robustness", "-d", "digits", "--detector", "lid", "--eps", "1.5"], "linf eps must be in (0, 1.0]"),
        (["robustness", "-d", "digits", "--detector", "lid", "-a", "pgd"], "unknown adaptive attack 'pgd'; valid: "),
        (["robustness", "-d", "digits", "--detector", "nope"], "unknown detector 'nope'"),
        (["robustness", "-d", "digits", "--detector", "lid", "--sources", "train"],
         "unknown sources 'train'; valid: test, validation"),
        (["train", "-d", "nope"], "unknown dataset 'nope'; valid: "),
        (["train", "-d", "digits", "-m", "vgg"], "unknown model 'vgg'; valid: "),
        (["train", "-d", "digits", "--epochs", "0"], "epochs must be >= 1"),
        (["evaluate", "-d", "digits", "--detector", "lid", "-a", "nope"], "unknown attack 'nope'"),
        (["evaluate", "-d", "digits", "--detector", "lid", "-a", "pgd:eps=2"], "eps"),
        (["evaluate", "-d", "digits", "--detector", "lid", "-a", "fgsm", "--fit-attack", "pgd"], "fit attack"),
        (["attack", "-c", "/nonexistent/ck", "-a", "fgsm", "--out", "x"], "checkpoint directory"),
        (["train", "-d", "mnist", "--data-path", "/tmp"], "/tmp lacks train-images-idx3-ubyte"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, _, err = run(monkeypatch, capsys, *args)
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unknown_detector_is_rejected_before_any_work(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(monkeypatch, capsys, "evaluate", "-d", "digits", "--detector", "nope", "-a", "fgsm",
                       "--cache-dir", str(tmp_path))
    assert code == 2 and "unknown detector 'nope'" in err
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [(["--probes", "-1"], "--probes must be >= 1"), (["--probes", "5", "--probe-eps", "1.5"], "eps must be"),
     (["--probes", "5", "--probe-directions", "both"], "symmetric, positive")],
)
def test_train_rejects_bad_probe_options(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, options: list[str], message: str
) -> None:
    code, _, err = run(monkeypatch, capsys, "train", "-d", "digits", "-m", "small-cnn", "-o", str(tmp_path / "m"), *options)
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "m").exists()


def test_ownership_generate_and_verify(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                       tmp_path: Path) -> None:
    ckpt, queries = tmp_path / "source", tmp_path / "queries"
    train_digits(monkeypatch, capsys, ckpt)
    code, out, err = run(monkeypatch, capsys, "ownership", "generate", "-s", str(ckpt), "-o", str(queries), "-d", "digits",
                         "--method", "ipguard", "--steps", "60", "--size", "10", "--n-candidates", "40", "--k", "0.2")
    assert code == 0, err
    assert "ipguard query set of" in out
    code, out, err = run(monkeypatch, capsys, "ownership", "verify", "-q", str(queries), "--suspect", str(ckpt))
    assert code == 0, err
    result = json.loads(out)
    assert result["cae_acc"] == 1.0 and result["is_surrogate"] is True and "SURROGATE" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ownership", "verify", "--queries", "/nonexistent/q", "--suspect", "/nonexistent/m"], "query-set directory"),
        (["ownership", "verify", "-q", "/nonexistent/q"], "give exactly one suspect"),
        (["ownership", "verify", "-q", "/x", "--suspect", "/y", "--url", "http://localhost:1"], "exactly one suspect"),
        (["ownership", "generate", "-s", "/nonexistent/m", "-o", "/tmp/q", "--method", "nope"], "unknown --method"),
        (["ownership", "evaluate", "--removal", "bogus"], "unknown removal attack 'bogus'; valid: "),
        (["ownership", "evaluate", "--weights", "odd"], "unknown --weights 'odd'; valid: paper, sensitivity"),
    ],
)
def test_ownership_bad_input_is_one_line_exit_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                args: list[str], message: str) -> None:
    code, _, err = run(monkeypatch, capsys, *args)
    assert code == 2 and message in err and "Traceback" not in err and err.count("\n") == 1


def test_ownership_generate_cem_trains_local_models(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                    tmp_path: Path) -> None:
    ckpt, queries = tmp_path / "source", tmp_path / "queries"
    train_digits(monkeypatch, capsys, ckpt)
    args = ["ownership", "generate", "-s", str(ckpt), "-o", str(queries), "-d", "digits", "--n-local", "2", "--epochs", "10",
            "--steps", "20", "--tau", "0", "--size", "10", "--n-candidates", "40", "--cache-dir", str(tmp_path / "c")]
    code, out, err = run(monkeypatch, capsys, *args)
    assert code == 0, err
    assert "cem query set of" in out and len(list((tmp_path / "c" / "models").iterdir())) == 4
    code, _, err = run(monkeypatch, capsys, *[a if a != "digits" else "mnist" for a in args])
    assert code == 2 and "trained on 'digits', not 'mnist'" in err


@pytest.mark.slow
def test_demo_writes_tables_and_one_report(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    """`neuroprint demo` wiring on real MNIST, scaled down (the full demo is timed in BENCHMARKS.md)."""
    code, out, err = run(monkeypatch, capsys, "demo", "--n", "40", "--n-adaptive", "4", "--adaptive-steps", "3",
                         "--out-dir", str(tmp_path / "demo"), "--cache-dir", str(tmp_path / "cache"))
    assert code == 0, err
    assert "fit on pgd only" in out and "| bank | linf:0.3 |" in out and "short" in out
    html = (tmp_path / "demo" / "report.html").read_text()
    assert f"report: {tmp_path / 'demo' / 'report.html'}" in out
    assert "Detection on mnist" in html and "Adaptive attacks on mnist" in html and "deepfool" in html
