"""A cloud image's guest agent (qemu-guest-agent), through libvirt: the clock, and commands
run in the guest. One RPC per call."""
import base64
import importlib
import json
import time

from agent import exception

AGENT_TIMEOUT = 10             # seconds libvirt waits for one guest-agent answer


class GuestAgent:
    """Guest-agent calls on the domains of ``domains`` (agent.virt.libvirt.domains.Domains);
    a spare being made is looked up by its own uuid."""

    def __init__(self, host, libvirt_mod, domains):
        self._host = host
        self._lv = libvirt_mod
        self._domains = domains

    def set_time(self, uuid: str) -> None:
        """Set the guest's clock to the host's (qemu-ga guest-set-time): 1 RPC. A restored
        guest's clock stood still while it was saved."""
        dom = self._domains.handle_or_raise(uuid)
        now = time.time_ns()
        self._host.call('setTime', dom.setTime,
                        {'seconds': now // 10 ** 9, 'nseconds': now % 10 ** 9}, 0)

    def exec(self, uuid: str, argv: list[str]) -> int:
        """Start ``argv`` in the guest (qemu-ga guest-exec, output captured): its pid.
        The arguments are passed as a list: no shell parses them."""
        answer = self._command(uuid, 'guest-exec', {'path': argv[0], 'arg': argv[1:],
                                                    'capture-output': True})
        return int(answer['pid'])

    def exec_status(self, uuid: str, pid: int) -> dict | None:
        """None while ``pid`` runs; then {exitcode, out, err} (decoded, at most 4 KiB each)."""
        answer = self._command(uuid, 'guest-exec-status', {'pid': pid})
        if not answer.get('exited'):
            return None
        out = {}
        for key in ('out-data', 'err-data'):
            try:
                out[key[:3]] = base64.b64decode(answer.get(key, '')).decode('utf-8', 'replace')
            except ValueError:
                out[key[:3]] = ''
        return {'exitcode': answer.get('exitcode', answer.get('signal', -1)),
                'out': out['out'][-4096:], 'err': out['err'][-4096:]}

    def _command(self, uuid: str, command: str, arguments: dict) -> dict:
        if self._domains.is_spare(uuid):    # a spare being made (its cloud-init's first boot)
            dom = self._host.call('lookupByUUIDString', self._host.conn().lookupByUUIDString,
                                  uuid)
        else:
            dom = self._domains.handle_or_raise(uuid)
        request = json.dumps({'execute': command, 'arguments': arguments})
        # The guest agent's pass-through lives in libvirt_qemu (the fake has it in itself).
        send = getattr(self._lv, 'qemuAgentCommand', None) \
            or importlib.import_module('libvirt_qemu').qemuAgentCommand
        reply = self._host.call(command, send, dom, request, AGENT_TIMEOUT, 0)
        try:
            return json.loads(reply)['return']
        except (ValueError, KeyError, TypeError):
            raise exception.HypervisorError(op=command, reason='a malformed answer from the '
                                                               'guest agent') from None
