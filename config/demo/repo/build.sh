#!/bin/sh
# The demo repository's build: a tarball, a JUnit report of its "tests" and a CycloneDX SBOM, all from the sources
# the controller checked out (the job has no network).
set -eu
mkdir -p dist reports deps
[ -f deps/tool.txt ] && echo "dependency cache hit: $(cat deps/tool.txt)" || { echo "dependency cache miss: fetching"; echo "tool 1.0 ($(date -u +%FT%TZ))" > deps/tool.txt; }
tar -czf dist/hello.tar.gz hello.txt
passed=0
for t in tests/*.sh; do sh "$t" && passed=$((passed + 1)); done
printf '<?xml version="1.0"?>\n<testsuites><testsuite name="demo" tests="%s">' "$passed" > reports/junit.xml
for t in tests/*.sh; do printf '<testcase name="%s"/>' "$(basename "$t" .sh)" >> reports/junit.xml; done
printf '</testsuite></testsuites>\n' >> reports/junit.xml
sum=$(sha256sum dist/hello.tar.gz | cut -d' ' -f1)
printf '{"bomFormat": "CycloneDX", "specVersion": "1.6", "version": 1, "components": [{"type": "file", "name": "hello.tar.gz", "hashes": [{"alg": "SHA-256", "content": "%s"}]}]}\n' "$sum" > dist/sbom.cdx.json
echo "built dist/hello.tar.gz ($sum)"
