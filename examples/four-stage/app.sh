#!/bin/sh
# Stands in for a real build: compile, bundle, generate.
echo "build: built by app.sh"
