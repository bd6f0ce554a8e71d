#!/bin/sh
set -eu
echo "written by the vm-pool test --script" > /etc/vm-pool-test-script
