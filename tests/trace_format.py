"""Checks a Chrome trace-event file the way a viewer reads it (used by unit and functional tests).

The JSON object format of the Trace Event Format: ``traceEvents`` holds complete ("X"),
instant ("i") and metadata ("M") events; every track (pid, tid) a slice lands on is named by a
``thread_name`` metadata event; slices on one track nest (a slice either lies inside the one
that contains its start or begins after it ends), which is what Perfetto and chrome://tracing
need to draw a track as a flame chart.
"""
import collections
import json

_PHASES = {'X', 'i', 'M'}


def load(path: str) -> dict:
    """Parse and check ``path``; returns {track name: [events, in time order]}."""
    with open(path) as f:
        doc = json.load(f)
    return check(doc)


def check(doc: dict) -> dict:
    assert isinstance(doc, dict) and isinstance(doc.get('traceEvents'), list), 'no traceEvents'
    assert doc.get('displayTimeUnit') in ('ms', 'ns')
    names = {}
    per_track = collections.defaultdict(list)
    for ev in doc['traceEvents']:
        assert ev.get('ph') in _PHASES, ev
        assert isinstance(ev.get('name'), str) and ev['name'], ev
        assert isinstance(ev.get('pid'), int) and isinstance(ev.get('tid'), int), ev
        if ev['ph'] == 'M':
            assert isinstance(ev.get('args'), dict), ev
            if ev['name'] == 'thread_name':
                key = (ev['pid'], ev['tid'])
                assert key not in names, 'track named twice: %r' % (key,)
                names[key] = ev['args']['name']
            continue
        assert isinstance(ev.get('ts'), (int, float)) and ev['ts'] >= 0, ev
        assert isinstance(ev.get('cat'), str), ev
        if ev['ph'] == 'X':
            assert isinstance(ev.get('dur'), (int, float)) and ev['dur'] >= 0, ev
        else:
            assert ev.get('s') in ('t', 'p', 'g'), ev
        if 'args' in ev:
            assert isinstance(ev['args'], dict), ev
        per_track[(ev['pid'], ev['tid'])].append(ev)
    assert len(set(names.values())) == len(names), 'two tracks with one name'
    tracks = {}
    for key, events in per_track.items():
        assert key in names, 'events on an unnamed track %r' % (key,)
        events.sort(key=lambda e: (e['ts'], -e.get('dur', 0)))
        _check_nesting(names[key], [e for e in events if e['ph'] == 'X'])
        tracks[names[key]] = events
    return tracks


def _check_nesting(track: str, slices: list) -> None:
    slack = 0.002     # us: timestamps are rounded to a thousandth of a microsecond
    stack = []
    for ev in slices:      # sorted by start, longest first
        while stack and ev['ts'] >= stack[-1]['ts'] + stack[-1]['dur'] - slack:
            stack.pop()
        if stack:
            outer = stack[-1]
            assert ev['ts'] + ev['dur'] <= outer['ts'] + outer['dur'] + slack, (
                'on %s, %s [%s +%s] overlaps %s [%s +%s] without nesting'
                % (track, ev['name'], ev['ts'], ev['dur'], outer['name'], outer['ts'],
                   outer['dur']))
        stack.append(ev)


def names_in(events: list, parent: str | None = None, slices_only: bool = False) -> list:
    """Names of the slices and instants of a track, in time order; with ``parent``, only those
    inside the (first) slice of that name."""
    if slices_only:
        events = [e for e in events if e['ph'] == 'X']
    if parent is None:
        return [e['name'] for e in events]
    outer = next(e for e in events if e['ph'] == 'X' and e['name'] == parent)
    end = outer['ts'] + outer['dur']
    return [e['name'] for e in events
            if e is not outer and outer['ts'] <= e['ts'] and e['ts'] + e.get('dur', 0) <= end]
