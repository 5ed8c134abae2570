"""compute-ctl's command line: every command has its handler; a boot's spec from its flags."""
from agent.cmd import ctl as ctl_cmd
from agent.ctl import boot

U = '11111111-2222-3333-4444-555555555555'


def test_every_command_of_the_parser_has_a_handler_and_no_handler_is_unreachable():
    parser = ctl_cmd._parser()
    [sub] = [a for a in parser._actions if a.dest == 'cmd']
    assert set(sub.choices) == set(ctl_cmd.COMMANDS)


def test_a_boot_spec_is_made_of_exactly_the_flags_given():
    args = ctl_cmd._parser().parse_args([
        'boot', '--kernel', 'test-vmlinuz', '--initrd', 'test-initrd.img', '--count', '2',
        '--name', 'web', '--hostname', 'h', '--nic', 'user', '--nic', 'bridge:br0',
        '--meta', 'role=db', '--meta', 'empty=', '--disk-gb', '2', '--memory-mb', '256'])
    args.user_data_text, args.ssh_keys = None, ['ssh-ed25519 AAAA x']
    assert boot._spec(args, U, 1) == {
        'uuid': U, 'name': 'web-1', 'hostname': 'h-1', 'kernel': 'test-vmlinuz',
        'initrd': 'test-initrd.img', 'memory_mb': 256, 'disk_gb': 2,
        'nics': [{'type': 'user'}, {'type': 'bridge', 'bridge': 'br0'}],
        'meta': {'role': 'db', 'empty': ''}, 'ssh_keys': ['ssh-ed25519 AAAA x']}
    args = ctl_cmd._parser().parse_args(['boot', '--pool', 'tiny', '--uuid', U])
    args.user_data_text, args.ssh_keys = None, []
    assert boot._spec(args, U, 0) == {'uuid': U, 'pool': 'tiny'}     # the pool's flavor
