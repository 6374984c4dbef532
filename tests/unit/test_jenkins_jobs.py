"""infra/jenkins renders with the real `jenkins-jobs test` into the five delivery jobs.

The generated XML is read with xml.etree: job names, one shell builder calling `cidemo`, declared
parameters, credentials by id only, and the Generic Webhook Trigger filters, replayed here against
the GitHub payload fixtures to show which job each delivery would start.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, need

pytestmark = pytest.mark.unit

JOBS_DIR = REPO / "infra" / "jenkins"
GITHUB = REPO / "tests" / "data" / "github"
GWT = "org.jenkinsci.plugins.gwt."

EXPECTED = {
    "cidemo-pr-preview": ("cidemo env up --pr ", {"PR", "SHA", "CIDEMO_SITE"}),
    "cidemo-pr-close": ("cidemo env down --pr ", {"PR", "CIDEMO_SITE"}),
    "cidemo-staging-deploy": ("cidemo env up --staging ", {"SHA", "CIDEMO_SITE"}),
    "cidemo-production-deploy": ("cidemo env up --production ", {"SHA", "CIDEMO_SITE"}),
    "UPDATE_STAGING_DATABASE": ("cidemo env refresh-staging ", {"CIDEMO_SITE"}),
}
SECRET_LOOKING = [
    re.compile(p)
    for p in (
        r"gh[pousr]_[A-Za-z0-9]{20,}",
        r"github_pat_[A-Za-z0-9_]{20,}",
        r"AKIA[0-9A-Z]{16}",
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
        r"(?i)(password|secret|token)\s*[=:]\s*\S{6,}",
        r"\b[0-9a-f]{32,}\b",
    )
]


def _looks_random(word: str) -> bool:
    """A long run of mixed-case letters and digits, as API tokens and keys are."""
    return (
        len(word) >= 20
        and any(c.isdigit() for c in word)
        and any(c.islower() for c in word)
        and any(c.isupper() for c in word)
    )


def _texts(job: ET.Element) -> list[str]:
    """Element text and attribute values: what Jenkins would store, not the tag names."""
    found = [e.text or "" for e in job.iter()]
    found += [v for e in job.iter() for v in e.attrib.values()]
    return found


def _jenkins_jobs() -> str | None:
    beside = Path(sys.executable).with_name("jenkins-jobs")
    return str(beside) if beside.exists() else shutil.which("jenkins-jobs")


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ET.Element]:
    binary = _jenkins_jobs()
    need(binary is not None, "jenkins-jobs (pip install jenkins-job-builder)")
    out = tmp_path_factory.mktemp("jjb")
    conf = out / "jenkins_jobs.ini"
    conf.write_text("[job_builder]\nallow_duplicates=False\n")
    args = ["--conf", str(conf), "-l", "error", "test", "--config-xml", "-o", str(out / "xml")]
    proc = subprocess.run(
        [str(binary), *args, str(JOBS_DIR)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {p.parent.name: ET.parse(p).getroot() for p in (out / "xml").glob("*/config.xml")}


def _params(job: ET.Element) -> set[str]:
    return {e.text or "" for e in job.iterfind(".//parameterDefinitions/*/name")}


def _command(job: ET.Element) -> str:
    (builder,) = list(job.find("builders") or [])
    assert builder.tag == "hudson.tasks.Shell"
    return builder.findtext("command") or ""


def test_the_five_jobs_exist(jobs: dict[str, ET.Element]) -> None:
    assert set(jobs) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_one_shell_builder_calling_cidemo(jobs: dict[str, ET.Element], name: str) -> None:
    builders = list(jobs[name].find("builders") or [])
    assert [b.tag for b in builders] == ["hudson.tasks.Shell"]
    command = _command(jobs[name])
    calls = [line for line in command.splitlines() if "cidemo " in line]
    assert len(calls) == 1
    prefix, _ = EXPECTED[name]
    assert calls[0].startswith("exec " + prefix), calls[0]
    assert '--site "$CIDEMO_SITE"' in calls[0]


@pytest.mark.parametrize(
    "name", ["cidemo-pr-preview", "cidemo-staging-deploy", "cidemo-production-deploy"]
)
def test_deploying_jobs_take_the_build_path_of_the_webhook(
    jobs: dict[str, ET.Element], name: str
) -> None:
    """The same path as `cidemo webhook serve`: the commit is built from source here (fetched by
    SHA, built, tested, pushed to the site registry), never an image from elsewhere."""
    (call,) = [ln for ln in _command(jobs[name]).splitlines() if "cidemo " in ln]
    words = call.split()
    assert "--build" in words and words[words.index("--ref") + 1] == '"$SHA"', call
    assert "--image" not in words and "--source" not in words, call
    assert "IMAGE" not in _params(jobs[name])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameters_are_declared_and_used(jobs: dict[str, ET.Element], name: str) -> None:
    declared = _params(jobs[name])
    _, needed = EXPECTED[name]
    assert needed <= declared
    used = set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", _command(jobs[name])))
    assert used <= declared, f"undeclared: {used - declared}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_no_secret_in_the_xml(jobs: dict[str, ET.Element], name: str) -> None:
    job = jobs[name]
    texts = _texts(job)
    for text in texts:
        for pattern in SECRET_LOOKING:
            assert not pattern.search(text), f"{name}: {pattern.pattern} matches {text!r}"
        for word in re.findall(r"[A-Za-z0-9+/=_-]+", text):
            assert not _looks_random(word), f"{name}: {word!r} looks like a secret"
    for trigger in job.iter(GWT + "GenericTrigger"):
        assert not (trigger.findtext("token") or "")
        assert trigger.findtext("tokenCredentialId") == "cidemo-github-webhook-token"
        assert trigger.findtext("printPostContent") == "false"
    ids = [e.text or "" for e in job.iter("credentialsId")]
    assert ids and all(re.fullmatch(r"cidemo-[a-z0-9-]+", i) for i in ids)
    assert "ghprb" not in ET.tostring(job, encoding="unicode").lower()


def test_jobs_bind_only_the_github_token(jobs: dict[str, ET.Element]) -> None:
    """App secrets come from the site's state directory (cidemo env up hands them out and keeps
    them from forks); no job holds one as a Jenkins credential."""
    for name, job in jobs.items():
        bound = {e.text for e in job.iter("credentialsId")}
        assert bound == {"cidemo-github-token"}, name


def test_update_staging_database_is_manual_only(jobs: dict[str, ET.Element]) -> None:
    assert list(jobs["UPDATE_STAGING_DATABASE"].find("triggers") or []) == []


def _jsonpath(payload: Any, path: str) -> str:
    node = payload
    for part in path.removeprefix("$.").split("."):
        if not isinstance(node, dict) or part not in node:
            return ""
        node = node[part]
    return json.dumps(node) if isinstance(node, bool) else str(node)


def _would_trigger(job: ET.Element, event: str, payload: Any) -> bool:
    """What the Generic Webhook Trigger does with a delivery, for the parts these jobs use."""
    trigger = job.find(f"triggers/{GWT}GenericTrigger")
    if trigger is None:
        return False
    values = {"x_github_event": event}
    for var in trigger.iter(GWT + "GenericVariable"):
        value = _jsonpath(payload, var.findtext("value") or "")
        strip = var.findtext("regexpFilter")
        values[var.findtext("key") or ""] = re.sub(strip, "", value) if strip else value
    text = trigger.findtext("regexpFilterText") or ""
    for key in sorted(values, key=len, reverse=True):
        text = text.replace("$" + key, values[key])
    return re.search(trigger.findtext("regexpFilterExpression") or "", text) is not None


@pytest.mark.parametrize(
    ("fixture", "started"),
    [
        ("pull_request.opened", {"cidemo-pr-preview"}),
        ("pull_request.synchronize", {"cidemo-pr-preview"}),
        ("pull_request.reopened", {"cidemo-pr-preview"}),
        ("pull_request.closed-merged", {"cidemo-pr-close"}),
        ("pull_request.closed-unmerged", {"cidemo-pr-close"}),
        ("pull_request.opened-fork", set()),
        ("pull_request.labeled-fork", set()),
        ("pull_request.opened-to-master", set()),
        ("push.development", {"cidemo-staging-deploy"}),
        ("push.master", {"cidemo-production-deploy"}),
        ("push.delete", set()),
        ("ping", set()),
        ("issues.opened", set()),
    ],
)
def test_each_delivery_starts_the_right_job(
    jobs: dict[str, ET.Element], fixture: str, started: set[str]
) -> None:
    payload = json.loads((GITHUB / f"{fixture}.json").read_text())
    event = fixture.split(".", 1)[0]
    assert {n for n, job in jobs.items() if _would_trigger(job, event, payload)} == started


def test_untrusted_author_does_not_start_a_preview(jobs: dict[str, ET.Element]) -> None:
    payload = json.loads((GITHUB / "pull_request.opened.json").read_text())
    payload["pull_request"]["author_association"] = "CONTRIBUTOR"
    assert not _would_trigger(jobs["cidemo-pr-preview"], "pull_request", payload)


def test_fork_by_a_collaborator_does_not_start_a_preview(jobs: dict[str, ET.Element]) -> None:
    payload = json.loads((GITHUB / "pull_request.opened-fork.json").read_text())
    payload["pull_request"]["author_association"] = "COLLABORATOR"
    assert not _would_trigger(jobs["cidemo-pr-preview"], "pull_request", payload)
    payload["pull_request"]["head"]["repo"]["full_name"] = "paulczar/ci-demo"
    assert _would_trigger(jobs["cidemo-pr-preview"], "pull_request", payload)


# The plugin that provides each class the job XML names; Jenkins core's own classes are
# CORE_CLASSES. Any other class fails the test below until it is added here.
PLUGIN_OF_CLASS = {
    "org.jenkinsci.plugins.gwt.": "generic-webhook-trigger",
    "org.jenkinsci.plugins.credentialsbinding.": "credentials-binding",
    "hudson.plugins.timestamper.": "timestamper",
}
CORE_CLASSES = ("hudson.model.", "hudson.tasks.", "hudson.scm.NullSCM", "jenkins.model.")
# What the image needs for itself, not for the jobs: reading casc.yaml, and the Job DSL security
# setting casc.yaml makes.
IMAGE_OWN = {"configuration-as-code", "job-dsl"}
JENKINS_IMAGE = REPO / "cidemo_infra" / "data" / "images" / "jenkins"


def plugins_used(jobs: dict[str, ET.Element]) -> set[str]:
    """From the XML: `plugin="name@version"` attributes and the plugins' classes."""
    used: set[str] = set()
    for name, job in jobs.items():
        for element in job.iter():
            if "plugin" in element.attrib:
                used.add(element.attrib["plugin"].split("@")[0])
            for tag in (element.tag, element.attrib.get("class", "")):
                if "." not in tag or tag.startswith(CORE_CLASSES):
                    continue
                owner = next((p for c, p in PLUGIN_OF_CLASS.items() if tag.startswith(c)), None)
                assert owner is not None, f"{name}: which plugin provides {tag}?"
                used.add(owner)
    return used


def plugins_listed() -> set[str]:
    lines = (JENKINS_IMAGE / "plugins.txt").read_text().splitlines()
    return {ln.split(":")[0].strip() for ln in lines if ln.strip() and not ln.startswith("#")}


def test_plugins_txt_covers_every_plugin_the_jobs_use(jobs: dict[str, ET.Element]) -> None:
    used = plugins_used(jobs)
    assert {"generic-webhook-trigger", "credentials-binding", "timestamper"} <= used
    assert plugins_listed() == used | IMAGE_OWN


def test_the_jobs_label_is_defined_in_the_configuration_as_code(
    jobs: dict[str, ET.Element],
) -> None:
    casc = yaml.safe_load((JENKINS_IMAGE / "casc.yaml").read_text())
    labels = set(str(casc["jenkins"].get("labelString", "")).split())
    assert casc["jenkins"]["numExecutors"] >= 1  # the built-in node runs them
    for node in casc["jenkins"].get("nodes") or []:
        for agent in node.values():
            labels |= set(str(agent.get("labelString", "")).split())
    for name, job in jobs.items():
        wanted = job.findtext("assignedNode")
        assert wanted, f"{name} asks for no label"
        assert wanted in labels, f"{name} asks for {wanted!r}; casc.yaml defines {labels}"


def test_the_jobs_default_site_exists(jobs: dict[str, ET.Element]) -> None:
    for name, job in jobs.items():
        for param in job.iterfind(".//parameterDefinitions/*"):
            if param.findtext("name") == "CIDEMO_SITE":
                default = param.findtext("defaultValue") or ""
                assert (REPO / default).is_file(), f"{name}: CIDEMO_SITE default {default}"
                break
        else:
            pytest.fail(f"{name}: no CIDEMO_SITE parameter")
