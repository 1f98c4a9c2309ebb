# shellcheck shell=bash
# What the bash scripts here share (scripts/e2e-swarm, scripts/swarm-nodes): their messages and
# their one way of waiting. Sourced from the repository root, where they cd first:
#
#   . scripts/lib.sh

# log MESSAGE...: a step's detail, indented under its `== phase` line, on standard error.
log() { echo "   $*" >&2; }

# fail MESSAGE...: says why and exits 1.
fail() { echo "FAILED: $*" >&2; exit 1; }

# How often wait_for tries again, in seconds; a script may set its own after sourcing this.
poll_interval_s=1

# wait_for SECONDS DESCRIPTION COMMAND...: runs COMMAND, its output discarded, every
# poll_interval_s until it succeeds; returns 1, saying what it waited for, after SECONDS.
wait_for() {
    local timeout=$1 what=$2
    shift 2
    local deadline=$(($(date +%s) + timeout))
    until "$@" >/dev/null 2>&1; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            echo "timed out after ${timeout} s waiting for $what" >&2
            return 1
        fi
        sleep "$poll_interval_s"
    done
}
