# Filters of the citadel role: quoting a setting for citadel's .env (read with dotenv), reading the JSON
# document `citadel run PLAYBOOK --json` prints into Ansible's changed/failed and a recap, and reading each
# host's `citadel health-check --json` into one status table for the fleet (status.yml).
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import posixpath
import re

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.text.converters import to_text

NAME = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*$')

# citadel's exit codes (README, "Exit codes").
EXIT_MEANING = {
    1: 'a bug in citadel: see the stack trace below',
    2: 'a task failed; the changes of this run, if any, were rolled back (ROLLBACK above)',
    3: 'another citadel run holds the lock of this app root',
    4: 'invalid settings or arguments; nothing on disk was changed',
    99: 'interrupted; stopped after the current step and rolled back',
}


def setting_text(value, name='setting'):
    """A setting as the string citadel reads: booleans as true/false, numbers as written."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, (int, float)):
        return to_text(value)
    if isinstance(value, str):
        return to_text(value)
    raise AnsibleFilterError('citadel setting %s: expected a string, number or boolean, got %s' % (name, type(value).__name__))


def citadel_env(settings, *more):
    """The settings dicts merged (later ones win), names checked, values as strings; None or omitted = unset."""
    merged = {}
    for one in (settings,) + more:
        if one is None:
            continue
        if not isinstance(one, dict):
            raise AnsibleFilterError('citadel settings: expected a dict of NAME: value, got %s' % type(one).__name__)
        merged.update(one)
    out = {}
    for name, value in merged.items():
        name = to_text(name)
        if not NAME.match(name):
            raise AnsibleFilterError('citadel setting name %r: expected letters, digits and _ (such as CITADEL_APP_ROOT)' % name)
        if value is None:
            continue
        out[name] = setting_text(value, name)
    return out


def dotenv_quote(value, name='setting'):
    """
    The value quoted so that dotenv's parser (the one citadel uses) returns exactly `value`.
    dotenv strips one pair of ', " or ` quotes; inside single quotes and backticks everything is literal
    (newlines included), inside double quotes \\n and \\r become line breaks. A quote of the same kind cannot
    be escaped, so the first kind absent from the value is used. dotenv turns every CR into LF before parsing.
    """
    text = setting_text(value, name)
    if '\0' in text:
        raise AnsibleFilterError('citadel setting %s: a NUL byte cannot be written to .env' % name)
    if '\r' in text:
        raise AnsibleFilterError('citadel setting %s: a carriage return cannot be written to .env (dotenv reads it as a newline)' % name)
    if "'" not in text:
        return "'" + text + "'"
    if '`' not in text:
        return '`' + text + '`'
    if '"' not in text and '\\n' not in text and '\\r' not in text:
        return '"' + text + '"'
    raise AnsibleFilterError("citadel setting %s: a value holding ', ` and \" (or \\n) at once cannot be written to .env" % name)


# citadel's own defaults for the three roots (README, "Settings").
ROOT_DEFAULTS = (('CITADEL_APP_ROOT', '/opt/citadel'), ('CITADEL_MODELS_ROOT', '/mnt/citadel-models'), ('CITADEL_BACKUP_ROOT', '/mnt/citadel-backup'))
# Directories the install dir must never be: it is mirrored with rsync --delete.
SYSTEM_DIRS = ('/', '/usr', '/usr/local', '/usr/local/lib', '/usr/lib', '/opt', '/var', '/var/lib', '/home', '/srv', '/etc', '/root', '/tmp', '/mnt')


def citadel_install_clashes(install_dir, env):
    """Why install_dir cannot hold citadel's mirrored code: a system directory, or one of the roots (or inside one, or around one)."""
    install = posixpath.normpath(to_text(install_dir))
    if not posixpath.isabs(install):
        return ['not an absolute path']
    if install in SYSTEM_DIRS:
        return ['a system directory']
    clashes = []
    for name, default in ROOT_DEFAULTS:
        root = posixpath.normpath(to_text((env or {}).get(name) or default))
        if install == root or (install + '/').startswith(root + '/') or (root + '/').startswith(install + '/'):
            clashes.append('%s=%s' % (name, root))
    return clashes


def citadel_report(stdout):
    """The document `citadel run --json` printed, or None when stdout is not one."""
    try:
        doc = json.loads(to_text(stdout or ''))
    except ValueError:
        return None
    if isinstance(doc, dict) and isinstance(doc.get('stats'), dict) and isinstance(doc.get('tasks'), list):
        return doc
    return None


def _count(doc, key):
    try:
        return int(doc['stats'].get(key) or 0)
    except (TypeError, ValueError):
        return 0


def citadel_changed(result):
    """How many of citadel's tasks changed (or would change, under --check)."""
    doc = citadel_report(result.get('stdout')) if isinstance(result, dict) else None
    return _count(doc, 'changed') if doc else 0


def citadel_failed(result):
    """True when citadel failed: a nonzero exit, no JSON document on stdout, or a failed task in it."""
    if not isinstance(result, dict):
        return True
    doc = citadel_report(result.get('stdout'))
    return result.get('rc') != 0 or doc is None or _count(doc, 'failed') > 0 or bool(doc.get('interrupted'))


def citadel_recap(result, changes_max=10):
    """citadel's own recap, one string per line: each task, its changes and warnings, rollback, the stats."""
    if not isinstance(result, dict):
        return ['citadel did not run']
    if result.get('skipped'):
        return ['citadel did not run: %s' % to_text(result.get('skip_reason') or result.get('msg') or 'skipped')]
    lines = []
    doc = citadel_report(result.get('stdout'))
    if doc is not None:
        for task in doc['tasks']:
            lines.append('%-8s %s: %s' % (task.get('status'), task.get('name'), task.get('msg')))
            changes = task.get('changes') or []
            for change in changes[:changes_max]:
                lines.append('    %s %s' % (change.get('action'), change.get('path')))
            if len(changes) > changes_max:
                lines.append('    and %d more changes' % (len(changes) - changes_max))
            for warning in task.get('warnings') or []:
                lines.append('    warning: %s' % warning)
        rolled = doc.get('rolled_back') or []
        if rolled:
            lines.append('ROLLBACK (%d/%d undone, newest first)' % (len([s for s in rolled if s.get('done')]), len(rolled)))
            for step in rolled:
                lines.append('    %s %s' % ('undone' if step.get('done') else 'FAILED', step.get('msg')))
        if doc.get('interrupted'):
            lines.append('interrupted')
        if doc.get('check'):
            lines.append('check mode: nothing was changed')
        stats = doc['stats']
        lines.append('RECAP  ok=%s changed=%s failed=%s skipped=%s' % (stats.get('ok', 0), stats.get('changed', 0), stats.get('failed', 0), stats.get('skipped', 0)))
    rc = result.get('rc')
    if rc not in (0, None) or doc is None:
        meaning = EXIT_MEANING.get(rc, 'unexpected exit status') if isinstance(rc, int) else 'did not run'
        lines.append('citadel exited %s: %s%s' % (rc, meaning, '' if doc is not None else '; no JSON report on stdout'))
        if result.get('msg') and not result.get('stderr') and doc is None:
            lines.append(to_text(result['msg']))
    for line in to_text(result.get('stderr') or '').splitlines():
        if line.strip():
            lines.append('stderr: %s' % line)
    return lines


# health-check answers as a monitoring plugin does (README, "Exit codes").
HEALTH_BY_EXIT = {0: 'ok', 1: 'warning', 2: 'critical', 3: 'unknown'}
# Verdicts that fail the status play: a host that is critical, or that could not be judged.
FAILING = ('critical', 'unknown', 'unreachable')
PROBLEM_CELL_MAX = 48


def duration(seconds):
    """3d 4h, 5h 12m, 7m: as citadel writes an age (lib/infra/format.ts)."""
    seconds = max(0, int(seconds))
    days, hours, minutes = seconds // 86400, seconds // 3600 % 24, seconds // 60 % 60
    if days:
        return '%dd %dh' % (days, hours)
    if hours:
        return '%dh %dm' % (hours, minutes)
    return '%dm' % minutes


def health_report(stdout):
    """The document `citadel health-check --json` printed, or None when stdout is not one."""
    try:
        doc = json.loads(to_text(stdout or ''))
    except ValueError:
        return None
    if isinstance(doc, dict) and doc.get('overall') in ('ok', 'warning', 'critical') and isinstance(doc.get('problems'), list):
        return doc
    return None


def _backup_cell(backups):
    newest = backups.get('newest') if isinstance(backups, dict) else None
    if not isinstance(newest, dict):
        return '-'
    age = newest.get('age') or (duration(newest['age_seconds']) if isinstance(newest.get('age_seconds'), int) else '?')
    return '%s, %s ago' % (newest.get('name'), age)


def _verification_cell(backups):
    last = backups.get('last_verification') if isinstance(backups, dict) else None
    if not isinstance(last, dict):
        return 'never'
    if last.get('ok'):
        return 'ok, %s ago' % duration(last.get('age_seconds') or 0)
    return 'FAILED, %s ago (%s problems)' % (duration(last.get('age_seconds') or 0), last.get('problems', '?'))


def _why_unknown(result):
    """The first line that says why health-check gave no report: its output, or Ansible's message."""
    for text in (result.get('stderr'), result.get('stdout'), result.get('msg')):
        for line in to_text(text or '').splitlines():
            line = line.strip()
            if line:
                return line
    return 'health-check gave no report (exit %s)' % result.get('rc')


def citadel_health(result, host):
    """
    One host's line of the fleet status from its registered health-check result (None: the host gave no
    answer, unreachable or failed before). overall is ok, warning, critical, unknown or unreachable; failing
    says whether it fails the status play.
    """
    row = {'host': to_text(host), 'overall': 'unreachable', 'failing': True, 'problems': [], 'local': '-', 'remote': '-', 'verified': '-'}
    if not isinstance(result, dict) or result.get('unreachable'):
        row['problems'] = [{'severity': 'unreachable', 'text': to_text(result.get('msg')) if isinstance(result, dict) and result.get('msg') else 'no answer from the host'}]
        return row
    doc = health_report(result.get('stdout'))
    if doc is None or HEALTH_BY_EXIT.get(result.get('rc')) in (None, 'unknown'):
        row['overall'] = 'unknown'
        row['problems'] = [{'severity': 'unknown', 'text': _why_unknown(result)}]
        return row
    backups = doc.get('backups') or {}
    # backups_remote appears once BACKUP_REMOTE is read by health-check; older citadel has no such key.
    remote = doc.get('backups_remote')
    row.update({
        'overall': doc['overall'],
        'failing': doc['overall'] in FAILING,
        'problems': [{'severity': to_text(p.get('severity')), 'text': '%s: %s' % (p.get('check'), p.get('message'))} for p in doc['problems'] if isinstance(p, dict)],
        'local': _backup_cell(backups),
        'remote': _backup_cell(remote) if isinstance(remote, dict) else '-',
        'verified': _verification_cell(backups),
    })
    return row


def _short(problems):
    if not problems:
        return '-'
    text = problems[0]['text']
    first = text if len(text) <= PROBLEM_CELL_MAX else text[:PROBLEM_CELL_MAX - 3] + '...'
    return first if len(problems) == 1 else '%s (+%d more)' % (first, len(problems) - 1)


def citadel_fleet_status(hosts, hostvars, result_name):
    """
    The fleet's status as lines: a headline, one table row per host, every problem of the hosts not ok in
    full, and the hosts that fail the play. result_name is the variable each host registered health-check in.
    """
    rows = [citadel_health(hostvars[host].get(result_name), host) for host in hosts]
    header = ('HOST', 'OVERALL', 'PROBLEMS', 'NEWEST LOCAL BACKUP', 'NEWEST REMOTE BACKUP', 'LAST VERIFICATION')
    cells = [header] + [(r['host'], r['overall'].upper(), _short(r['problems']), r['local'], r['remote'], r['verified']) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    counts = {}
    for r in rows:
        counts[r['overall']] = counts.get(r['overall'], 0) + 1
    order = ('ok', 'warning', 'critical', 'unknown', 'unreachable')
    lines = ['citadel on %d hosts: %s' % (len(rows), ', '.join('%d %s' % (counts[v], v) for v in order if v in counts))]
    lines += ['  '.join(c[i].ljust(widths[i]) for i in range(len(header))).rstrip() for c in cells]
    details = [(r['host'], p) for r in rows if r['overall'] != 'ok' for p in r['problems']]
    if details:
        lines.append('')
        lines += ['%s  %-11s %s' % (host.ljust(widths[0]), problem['severity'], problem['text']) for host, problem in details]
    failing = [r for r in rows if r['failing']]
    if failing:
        lines.append('')
        lines.append('FAILED: %s' % ', '.join('%s (%s)' % (r['host'], r['overall']) for r in failing))
    return lines


class FilterModule(object):
    def filters(self):
        return {
            'citadel_env': citadel_env,
            'citadel_dotenv_quote': dotenv_quote,
            'citadel_install_clashes': citadel_install_clashes,
            'citadel_report': citadel_report,
            'citadel_changed': citadel_changed,
            'citadel_failed': citadel_failed,
            'citadel_recap': citadel_recap,
            'citadel_health': citadel_health,
            'citadel_fleet_status': citadel_fleet_status,
        }
