"""`python -m kuberec.backends.horovodrun ARGS...`: horovodrun without the environment in its ranks' command lines.

horovodrun's Gloo launcher starts each local rank as `sh -c "env K=V K=V ... python ..."` with the whole environment
spelled out, so a credential in it (AWS_SECRET_ACCESS_KEY, MLFLOW_TRACKING_PASSWORD) would be readable in `ps` by
every user of the machine. The ranks inherit horovodrun's environment anyway, so the variables that may hold
credentials are left out of that command line through horovod's own filter (`IGNORE_REGEXES`, which keeps its
secret key out the same way); their values still reach the ranks.
"""

from __future__ import annotations

import sys

# Names of variables that carry credentials (a tracking URI may embed user:password@).
CREDENTIAL_NAMES = (r"(?i).*(SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|ACCESS_KEY|PRIVATE_KEY|API_KEY|USERNAME).*",
                    r"MLFLOW_TRACKING_URI$")


def main() -> int:
    from horovod.runner.common.util import env
    from horovod.runner.launch import run_commandline

    env.IGNORE_REGEXES.update(CREDENTIAL_NAMES)
    sys.argv[0] = "horovodrun"
    return run_commandline() or 0


if __name__ == "__main__":
    sys.exit(main())
