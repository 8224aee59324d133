#!/bin/sh
echo "FAKE config.sh: a JIT runner is never configured"; exit 1
