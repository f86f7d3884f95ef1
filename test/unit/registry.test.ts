// The registry line is rewritten where it stands: only the alias's directory changes, every other byte of
// the env file (comments, quotes, other settings, CR LF endings) stays, and what dotenv reads back is the
// wanted registry. An edit that would not read back so is refused, never written.
import { parse as parseDotenv } from 'dotenv'
import { describe, expect, it } from 'vitest'
import { SETTINGS, type ModelEntry } from '../../lib/infra/config.ts'
import { registryRefusal, rewriteRegistry } from '../../lib/models/registry.ts'
import { loadSettings } from '../../lib/infra/config.ts'

const registryOf = (text: string): ModelEntry[] => SETTINGS.MODEL_REGISTRY.schema.parse(parseDotenv(Buffer.from(text)).MODEL_REGISTRY ?? '')
const rewrite = (text: string, alias: string, dir: string) => rewriteRegistry(text, registryOf(text), alias, dir, 'test.env')

const FILE = [
  '# citadel settings',
  'CITADEL_APP_ROOT=/opt/citadel  # the app',
  '',
  '# which model each alias serves; keep in step with vLLM',
  'MODEL_REGISTRY=mixtral=mixtral-8x7b-instruct, yi34b=yi-34b-chat   # two models',
  'MODEL_AUTO_BACKUP=false',
  '',
].join('\n')

describe('rewriteRegistry', () => {
  it('changes only the directory of the alias, comments and spacing intact', () => {
    const next = rewrite(FILE, 'yi34b', 'yi-34b-chat-v2')
    expect(next).toBe(FILE.replace('yi34b=yi-34b-chat ', 'yi34b=yi-34b-chat-v2 '))
    expect(registryOf(next)).toEqual([{ alias: 'mixtral', dir: 'mixtral-8x7b-instruct' }, { alias: 'yi34b', dir: 'yi-34b-chat-v2' }])
  })

  it('keeps quotes and export, and CR LF line endings byte for byte', () => {
    const crlf = 'A=1\r\nexport MODEL_REGISTRY="chat=m-v1,code=c-v1" # quoted\r\nB=2\r\n'
    expect(rewrite(crlf, 'chat', 'm-v2')).toBe(crlf.replace('chat=m-v1', 'chat=m-v2'))
    const single = "MODEL_REGISTRY='chat=m-v1'\n"
    expect(rewrite(single, 'chat', 'm v2')).toBe("MODEL_REGISTRY='chat=m v2'\n")
  })

  it('rewrites the definition dotenv takes, the last one', () => {
    const twice = 'MODEL_REGISTRY=chat=old\n# later wins\nMODEL_REGISTRY=chat=m-v1\n'
    expect(rewrite(twice, 'chat', 'm-v2')).toBe('MODEL_REGISTRY=chat=old\n# later wins\nMODEL_REGISTRY=chat=m-v2\n')
  })

  it('adds a new alias at the end of the value, and a line to a file without one', () => {
    expect(rewrite('MODEL_REGISTRY=chat=m-v1 # c\n', 'code', 'c-v1')).toBe('MODEL_REGISTRY=chat=m-v1,code=c-v1 # c\n')
    expect(rewrite('MODEL_REGISTRY=\n', 'code', 'c-v1')).toBe('MODEL_REGISTRY=code=c-v1\n')
    expect(rewriteRegistry('# nothing yet', [{ alias: 'chat', dir: 'm-v1' }], 'chat', 'm-v2', 'test.env')).toBe('# nothing yet\nMODEL_REGISTRY=chat=m-v2\n')
  })

  it('refuses a directory that would not read back as written, rather than change another setting', () => {
    expect(() => rewrite('MODEL_REGISTRY=chat=m-v1\nX=1\n', 'chat', 'm#2')).toThrow(/cannot write chat=m#2 into MODEL_REGISTRY of test.env/)
    expect(() => rewrite('export MODEL_REGISTRY=chat=m-v1 # c\n', 'chat', 'x #y')).toThrow(/cannot write/)
  })
})

describe('registryRefusal', () => {
  const settings = (env: Record<string, string>) => loadSettings({ CITADEL_ENV_FILE: '/dev/null', ...env })

  it('says where the value comes from when it is not the env file', () => {
    expect(registryRefusal(settings({ MODEL_REGISTRY: 'chat=m' }), '/etc/citadel.env', new Map())).toMatch(/^MODEL_REGISTRY is set in the environment of this run, which overrides \/etc\/citadel.env/)
    const units = new Map([['citadel-daily.service', [['MODEL_REGISTRY', 'chat=m'] as [string, string]]]])
    expect(registryRefusal(settings({}), '/etc/citadel.env', units)).toMatch(/installed in the systemd unit citadel-daily.service .*rerun `citadel run install-services`/)
    const elsewhere = new Map([['citadel-monitor.service', [['CITADEL_ENV_FILE', '/srv/other.env'] as [string, string]]]])
    expect(registryRefusal(settings({}), '/etc/citadel.env', elsewhere)).toMatch(/reads its settings from \/srv\/other.env/)
    const same = new Map([['citadel-monitor.service', [['CITADEL_ENV_FILE', '/etc/citadel.env'] as [string, string]]]])
    expect(registryRefusal(settings({}), '/etc/citadel.env', same)).toBeNull()
  })
})
