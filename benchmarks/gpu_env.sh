# Source on the GPU machine after `bash .gpu/p2/install.sh`: the DSL site, wb from this checkout.
. /tmp/site/env.sh
export PYTHONPATH="$PWD:$PYTHONPATH" PYTHONUNBUFFERED=1 WB_HOME=/tmp/wb-home
wb() { python3 -m workbench "$@"; }
export -f wb  # scripts run with bash -c see it too
