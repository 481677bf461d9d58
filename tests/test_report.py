"""`neuroprint report`: one self-contained HTML file from evaluation, robustness and ownership records, checked as
text and in a real browser (headless Debian chromium + chromedriver)."""
from __future__ import annotations

import base64
import io
import json
import re
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from browser import headless_chromium
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from neuroprint.adaptive import report as adaptive_report
from neuroprint.adaptive.robustness import RobustnessConfig, run_robustness
from neuroprint.cli import main
from neuroprint.errors import InputError
from neuroprint.evaluation import report as evaluation_report
from neuroprint.evaluation.protocol import EvalConfig, run_evaluation
from neuroprint.ownership import report as ownership_report
from neuroprint.ownership.experiment import OwnershipConfig, OwnershipReport
from neuroprint.ownership.scoring import SuspectResult
from neuroprint.report.build import record_kind, record_part, report_html, write_report
from neuroprint.report.html import markdown_html

ATTACKS = ["pgd:steps=5", "fgsm", "deepfool:steps=5,candidates=2"]
DETECTORS = ["mahalanobis", "lid", "bank:min_effect=50"]  # the bank cannot be fit here: a reported failure


Run = tuple[dict[str, Any], str]  # a JSON record (as read back from its file) and the Markdown its command prints


@pytest.fixture(scope="module")
def runs(guard_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """One run per kind: a real evaluation and a real robustness run of the tiny digits model (seconds), and a
    made-up ownership experiment (a real one trains a dozen models)."""
    cache = tmp_path_factory.mktemp("report-cache")
    quiet = {"progress": False, "log": lambda _: None}
    model = str(guard_checkpoint)
    evaluation = run_evaluation(EvalConfig(
        dataset="digits", model=model, attacks=ATTACKS, fit_attacks=["pgd:steps=5"], detectors=DETECTORS,
        n_fit=240, n_test=120, cache_dir=cache), **quiet)
    evaluation.command = ["neuroprint", "evaluate", "--detector", "lid"]
    robustness = run_robustness(RobustnessConfig(
        detectors=["mahalanobis"], budgets=["linf:0.3", "l2:1"], attacks=["joint"], dataset="digits", model=model,
        fit_attack="pgd:steps=5", n_fit=240, n_attack=8, steps=5, cache_dir=cache), **quiet)
    suspects = [
        SuspectResult("ftal", "surrogate", "ftal", 0.95, True, {"cem": 0.9, "ipguard": 0.8}, 1.0),
        SuspectResult("prune:rate=0.9", "surrogate", "prune", 0.5, False, {"cem": 0.2, "ipguard": 0.1}, 1.0),
        SuspectResult("reference small-cnn", "reference", "", 0.94, True, {"cem": 0.1, "ipguard": 0.7}, 1.0),
    ]
    comparison = [{"eps": 0.3, "attack": "cem", "success_rate": 0.5, "n": 10, "conferrability": 0.4,
                   "surrogates": 1, "references": 1}]
    ownership = OwnershipReport(
        OwnershipConfig(dataset="digits", architecture="small-cnn", removals=["ftal"]), 0.96,
        {"cem": {"n": 20, "tau": 0.9}, "ipguard": {"n": 20, "k": 0.5}}, suspects, {"cem": 1.0, "ipguard": 1.0},
        comparison, 12.0)
    done = (("evaluation", evaluation, evaluation_report), ("robustness", robustness, adaptive_report),
            ("ownership", ownership, ownership_report))
    return {kind: (json.loads(json.dumps(report.to_json())), module.markdown_table(report))
            for kind, report, module in done}


@pytest.fixture(scope="module")
def records(runs: dict[str, Run]) -> dict[str, dict[str, Any]]:
    return {kind: record for kind, (record, _) in runs.items()}


class Elements(HTMLParser):
    """Counts of tags, every src/href, and the text of the page."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: dict[str, int] = {}
        self.links: list[str] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1
        self.links += [value or "" for name, value in attrs if name in ("src", "href")]

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_records_hold_scores_examples_and_the_command(records: dict[str, dict[str, Any]]) -> None:
    record = records["evaluation"]
    assert record["kind"] == "evaluation" and record["command"] == ["neuroprint", "evaluate", "--detector", "lid"]
    fitted = [r for r in record["results"] if r["error"] is None]
    assert len(fitted) == 6 and all(r["error"] for r in record["results"] if r not in fitted)
    for r in fitted:
        assert len(r["clean_scores"]) == r["n_clean"] and len(r["adv_scores"]) == r["n_adv"]
        assert isinstance(r["threshold"], float) and len(r["example_scores"]["clean"]) == 6
        assert len(r["example_scores"]["adversarial"]) == 6
    assert [e["attack"] for e in record["examples"]] == [a for a in ATTACKS for _ in range(6)]
    for example in record["examples"]:
        assert example["label"] != example["adv_pred"] and example["l2"] > 0
        assert example["linf"] <= 0.3 + 1e-6 or example["attack"].startswith("deepfool")  # L-inf attacks: eps 0.3
        for key in ("clean_png", "adversarial_png", "perturbation_png"):
            assert Image.open(io.BytesIO(base64.b64decode(example[key]))).size == (8, 8)
    assert records["ownership"]["kind"] == "ownership" and records["robustness"]["kind"] == "robustness"


def test_tables_are_the_ones_the_commands_print(runs: dict[str, Run]) -> None:
    """Each report is rebuilt from its JSON record: its Markdown tables come out as the command printed them."""
    for kind, (record, printed) in runs.items():
        module = {"evaluation": evaluation_report, "robustness": adaptive_report, "ownership": ownership_report}[kind]
        assert module.markdown_table(module.report_from_json(record)) == printed
        assert markdown_html(printed) in report_html([record_part(record)])
    assert runs["evaluation"][1].count("fit failed") == len(ATTACKS)


@pytest.mark.parametrize(("kind", "tables", "figures", "titles"), [
    ("evaluation", 4 + len(ATTACKS), 3,
     ["Detection", "ROC curves", "Score distributions", "Examples", "Attacks", "All metrics", "Provenance"]),
    ("robustness", 4, 1, ["Adaptive attacks", "Worst case", "Convergence", "Every attack", "Provenance"]),
    ("ownership", 5, 2, ["Ownership verification", "ROC curve", "CAEAcc per suspect", "Query sets", "Provenance"]),
])
def test_each_kind_has_every_table_and_figure(records: dict[str, dict[str, Any]], kind: str, tables: int,
                                              figures: int, titles: list[str]) -> None:
    html = report_html([record_part(records[kind])])
    page = Elements(html)
    assert page.tags.get("table") == tables and page.tags.get("figure") == figures
    assert page.tags.get("script") is None and "<link" not in html and "@import" not in html
    assert all(link.startswith(("data:image/png;base64,", "#")) for link in page.links)  # nothing is fetched
    headings = re.findall(r"<h2>(.*?)</h2>", html)
    assert headings == titles
    if kind == "evaluation":
        assert page.tags["img"] == figures + 3 * 6 * len(ATTACKS)  # clean, attacked, perturbation per example
        assert "could not be fit on pgd:steps=5" in html and "neuroprint evaluate --detector lid" in html


def test_several_records_on_one_page(records: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    paths = []
    for kind, record in records.items():
        paths.append(tmp_path / f"{kind}.json")
        paths[-1].write_text(json.dumps(record))
    out = write_report(paths, tmp_path / "all.html", intro="three <kinds>")
    html = out.read_text()
    assert re.findall(r'<h2 class="part"[^>]*>(.*?)</h2>', html) == ["Detection on digits", "Adaptive attacks on digits",
                                                                     "Ownership on digits"]
    assert "three &lt;kinds&gt;" in html and html.count("<h3>Provenance</h3>") == 3


def test_kind_is_read_from_the_fields_of_older_records(records: dict[str, dict[str, Any]]) -> None:
    for kind, record in records.items():
        assert record_kind({k: v for k, v in record.items() if k != "kind"}) == kind
    with pytest.raises(InputError, match="x.json is not a neuroprint record"):
        record_kind({"results": []}, "x.json")


def test_ownership_records_that_name_their_query_sets_fingerprints_still_build(
    records: dict[str, dict[str, Any]],
) -> None:
    """Ownership records written before the rename (experiments/results/ownership) hold "fingerprints"."""
    old = {k: v for k, v in records["ownership"].items() if k not in ("kind", "query_sets")}
    old["fingerprints"] = records["ownership"]["query_sets"]
    assert record_kind(old) == "ownership"
    assert ownership_report.report_from_json(old).query_sets == records["ownership"]["query_sets"]
    assert "<h2>Query sets</h2>" in report_html([record_part(old)])


def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["neuroprint", *args])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_writes_the_report_next_to_the_record(records: dict[str, dict[str, Any]], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "run" / "results.json"
    path.parent.mkdir()
    path.write_text(json.dumps(records["evaluation"]))
    code, out, err = run(monkeypatch, capsys, "report", str(path))
    assert code == 0, err
    assert out.strip() == f"report: {path.parent / 'report.html'}" and (path.parent / "report.html").stat().st_size
    code, out, err = run(monkeypatch, capsys, "report", str(path), str(path), "--out", str(tmp_path / "x.html"))
    assert code == 0 and (tmp_path / "x.html").is_file(), err


@pytest.mark.parametrize(("content", "message"), [
    (None, "expected a JSON file at"),
    ("{not json", "is not valid JSON"),
    ('{"a": 1}', "is not a neuroprint record: expected the JSON of `neuroprint evaluate`"),
    ("[1, 2]", "is not a neuroprint record"),
    ('{"kind": "evaluation", "results": []}', "is not a complete evaluation record (missing field 'attacks')"),
    ('{"kind": "robustness", "outcomes": 3}', "is not a complete robustness record"),
])
def test_bad_records_are_one_line_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str], content: str | None, message: str) -> None:
    path = tmp_path / "record.json"
    if content is not None:
        path.write_text(content)
    code, _, err = run(monkeypatch, capsys, "report", str(path))
    assert code == 2 and message in err and str(path) in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "report.html").exists()


def test_a_detector_with_an_unknown_name_is_an_incomplete_record(records: dict[str, dict[str, Any]],
                                                                 tmp_path: Path) -> None:
    record = json.loads(json.dumps(records["evaluation"]))
    record["results"][0]["detector"] = "nope"
    (tmp_path / "r.json").write_text(json.dumps(record))
    with pytest.raises(InputError, match=r"r.json is not a complete evaluation record \(unknown detector 'nope'"):
        write_report([tmp_path / "r.json"], tmp_path / "r.html")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    """One headless Chromium for the module."""
    with headless_chromium(tmp_path_factory.mktemp("chromium"), "1280,1000") as driver:
        yield driver


def test_the_report_renders_in_a_browser(browser: WebDriver, records: dict[str, dict[str, Any]],
                                         tmp_path: Path) -> None:
    paths = []
    for kind, record in records.items():
        paths.append(tmp_path / f"{kind}.json")
        paths[-1].write_text(json.dumps(record))
    out = write_report(paths, tmp_path / "report.html")
    browser.get(out.resolve().as_uri())
    assert browser.execute_script("return document.readyState") == "complete"
    assert browser.get_log("browser") == []  # no console errors or warnings
    tables = browser.find_elements(By.TAG_NAME, "table")
    assert len(tables) == Elements(out.read_text()).tags["table"]
    for table in tables:
        browser.execute_script("arguments[0].scrollIntoView()", table)
        assert table.size["width"] > 0 and table.size["height"] > 0
    images = browser.find_elements(By.TAG_NAME, "img")
    assert len(images) == 6 + 3 * 6 * len(ATTACKS)
    for image in images:
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) > 0
        assert image.size["width"] > 0 and image.size["height"] > 0
    shot = tmp_path / "report.png"
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, min(height, 12000))
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 0
