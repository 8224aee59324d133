"""What the attestation says about a job's reports: the totals of a JUnit XML file and the format and digest of an
SBOM (CycloneDX or SPDX JSON). Pure functions of the report's bytes; the reports come from the job, so the XML is
parsed with entity expansion refused (defusedxml) and a malformed report is an error naming it, not a crash."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from xml.etree.ElementTree import Element

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError, fromstring


class ReportError(ValueError):
    pass


@dataclass(frozen=True)
class TestTotals:
    tests: int
    passed: int
    failed: int  # failures and errors
    skipped: int

    def as_dict(self) -> dict[str, int]:
        return {"tests": self.tests, "passed": self.passed, "failed": self.failed, "skipped": self.skipped}


@dataclass(frozen=True)
class Sbom:
    format: str  # "CycloneDX" | "SPDX"
    spec_version: str
    sha256: str


def junit_totals(data: bytes, name: str) -> TestTotals:
    """Counts the testcases of a JUnit XML report (a <testsuites> or a single <testsuite>): a testcase with a
    <failure> or <error> failed, one with <skipped> was skipped, the others passed. Counting the testcases rather
    than trusting the suites' attributes keeps totals and cases consistent."""
    try:
        root = fromstring(data)
    except (ParseError, DefusedXmlException) as exc:
        raise ReportError(f"JUnit report {name} is not valid XML: {exc}") from None
    if root.tag not in ("testsuites", "testsuite"):
        raise ReportError(f"JUnit report {name}: the root element is <{root.tag}>, not <testsuites> or <testsuite>")
    failed = skipped = tests = 0
    for case in _cases(root):
        tests += 1
        if case.find("failure") is not None or case.find("error") is not None:
            failed += 1
        elif case.find("skipped") is not None:
            skipped += 1
    return TestTotals(tests=tests, passed=tests - failed - skipped, failed=failed, skipped=skipped)


def _cases(root: Element) -> list[Element]:
    return list(root.iter("testcase"))


def sbom_info(data: bytes, name: str) -> Sbom:
    """Recognises CycloneDX JSON (`bomFormat: CycloneDX`, `specVersion`) and SPDX JSON (`spdxVersion: SPDX-x.y`)."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ReportError(f"SBOM {name} is not JSON: {exc}") from None
    digest = hashlib.sha256(data).hexdigest()
    if isinstance(doc, dict) and doc.get("bomFormat") == "CycloneDX":
        return Sbom("CycloneDX", str(doc.get("specVersion") or ""), digest)
    if isinstance(doc, dict) and str(doc.get("spdxVersion") or "").startswith("SPDX-"):
        return Sbom("SPDX", str(doc["spdxVersion"]).removeprefix("SPDX-"), digest)
    raise ReportError(f"SBOM {name} is neither CycloneDX JSON (bomFormat) nor SPDX JSON (spdxVersion)")
