// Every kind of change a run can report, each with what it means. A closed list: an action missing here
// does not compile, so the reference generated from it (docs/json.md) names everything a run can say.

export const CHANGE_ACTIONS = {
  'create directory': 'a directory of the layout, a missing link target on the model disk, or the systemd unit directory was created, with its mode',
  'set owner': 'a directory just created was given CITADEL_OWNER',
  'fix mode': 'an existing directory or unit file had another mode; before and after are octal modes',
  'fix owner': 'an existing directory had another owner than CITADEL_OWNER; before and after are uid:gid',
  'create link': 'a missing link was created (atomically: temporary link, then rename)',
  'retarget link': 'a link pointed elsewhere and now points where it belongs',
  'replace empty directory with link': 'an empty directory stood where a link belongs and was replaced (only with --force)',
  'move aside': 'a file or directory stood where a link belongs and was renamed to <path>.citadel-aside-<time> (only with --force), never deleted',
  'create file': 'a file citadel writes (storage-env.sh, a systemd unit) was created; before is null, after its content',
  'update file': 'a file citadel writes had other content and was rewritten atomically; before and after are the contents',
  'mark root': "a disk root was given citadel's mark, <root>/.citadel-root.json; before and after are its content",
  'remember root marks': 'the app root recorded its roots\' marks in .citadel/roots.json; before and after are its content',
  'create full backup': 'a new full backup was made and published; after summarises it',
  'create incremental backup': 'a new incremental backup was made and published (unchanged files hard-linked to its parent)',
  'point latest': 'the latest link of a backup store was moved to the newest backup',
  'remove backup': 'a complete backup past retention was removed (renamed to .partial first)',
  'remove interrupted backup': 'a partial copy an interrupted create or cleanup left behind was removed',
  'heal backup file': 'a file of a backup that verify found rotten, missing or unreadable was replaced, by rename, with a copy that hashes to its manifest entry (from the active models, another backup or BACKUP_REMOTE); every backup sharing the rotten inode gets the same good one; before says what was wrong, after where the good bytes came from',
  'remove interrupted heal': 'a temporary file or directory an interrupted backup verify --repair left beside a backup file was removed',
  'send backup': 'a local backup was copied to the off-host store',
  'restore model': 'a model directory (or another top-level entry of a backup) was restored: built and verified beside the target, then renamed into place',
  'archive replaced model': 'what stood where a restore put a model directory was renamed to <models root>/archive/<name>.replaced-<time>, never deleted',
  'remove interrupted restore': 'a partial restore an interrupted run left in staging was removed (it only ever held copies and links)',
  'promote model': 'a model directory was renamed from staging/ into the active models to be served (model promote); after is where it came from',
  'reactivate model': 'an archived model directory was renamed back into the active models to be served again (model rollback); after is where it came from',
  'archive model': 'the model directory an alias served before a promote or rollback was renamed into <models root>/archive/, never deleted; after is where it went',
  'fetch model': 'a model was copied (or hard-linked from the Hugging Face cache) into <models root>/downloads/<name>.partial (model fetch); before says what an interrupted fetch had left there, after is the source',
  'stage model': 'a fetched and verified model directory was renamed from downloads/<name>.partial to staging/<name>, ready for model promote; after is where it came from',
  'systemctl daemon-reload': 'systemd was told to read the changed units',
  'systemctl try-restart': 'a running unit whose file changed was restarted to take the change',
  'systemctl enable --now': 'the monitor service and the daily and weekly timers were enabled and started',
} as const satisfies Record<string, string>

export type ChangeAction = keyof typeof CHANGE_ACTIONS
