#!/bin/sh
echo "built by app.sh"
