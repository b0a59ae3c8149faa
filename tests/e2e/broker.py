"""Mosquitto that can be restarted on the same port with the same settings (a broker restart).

tests/support/mosquitto.Mosquitto removes its directory on stop(); here `restart()` stops only
the process and starts a new one from the same password file, ACL and config (persistence as
configured there: off), so what the agents and the fleet see is the broker going away and
coming back with empty state — sessions and retained messages gone — on the address they know.
"""

from __future__ import annotations

import subprocess

from tests.support.mosquitto import Mosquitto


class RestartableMosquitto(Mosquitto):
    def kill_process(self) -> None:
        """Stop the broker process only (SIGTERM, then SIGKILL); keep files and port."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()

    def restart(self) -> None:
        self.kill_process()
        self.start()
