"""Settings: the `migration { }` block of flywall.hcl, validated and placed under a root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flywall.core.appliance.settings import (
    Duration,
    MigrationSettings,
    load_settings,
    parse_duration,
)
from flywall.core.model.errors import ConfigParseError, SettingsError

CONFIG = "etc/flywall/migration.hcl"
FLYWALL_HCL = "etc/flywall/flywall.hcl"


def write_config(root: Path, text: str, where: str = CONFIG) -> Path:
    """Write our settings file, beside a flywall.hcl (the seed's layout) if none is there."""
    path = root / where
    path.parent.mkdir(parents=True, exist_ok=True)
    flywall = root / FLYWALL_HCL
    if not flywall.exists():
        flywall.parent.mkdir(parents=True, exist_ok=True)
        flywall.write_text('schema_version = "1.0"\n', encoding="utf-8")
    path.write_text(text, encoding="utf-8")
    return path


def settings_error(root: Path, text: str) -> str:
    write_config(root, text)
    with pytest.raises(SettingsError) as info:
        load_settings(root)
    return str(info.value)


def test_a_missing_config_file_means_all_defaults_and_remembers_the_path(tmp_path):
    settings = load_settings(tmp_path)

    # no Flywall config at all: Flywall's own layout, reported as "none"
    assert settings.layout == "none"
    assert settings.config_path == tmp_path / "opt/flywall/etc/migration.hcl"
    assert settings.root == tmp_path
    assert settings.enabled is True
    assert settings.directory is None  # beside flywall.hcl, wherever the layout puts it
    assert settings.max_config_version == "1.1"
    assert (settings.stop_command, settings.start_command, settings.check_command) == (None,) * 3
    assert settings.auto_migrate is False
    assert settings.backup_before is True
    assert settings.timeout == 1800
    assert isinstance(settings.timeout, Duration)
    assert settings.version_table == "schema_versions"
    assert settings.current_version is None
    assert settings.strategy == "incremental"
    assert settings.validate_before is True
    assert settings.validate_after is True
    assert settings.dry_run is False
    assert settings.backup_retention == 7 * 86400
    assert settings.auto_rollback is False
    assert settings.rollback_timeout == 600
    assert settings.max_rollback_attempts == 3
    assert (settings.notify_on_start, settings.notify_on_complete) == (False, False)
    assert settings.notify_on_failure is True
    assert settings.notification_channels == ()
    assert settings.confirm_within is None
    assert settings.include_shipped is True
    assert settings.require_signatures is False
    assert settings.trusted_keys == ()
    assert settings.device_key_file is None
    assert settings.email is None
    assert settings.slack is None
    assert settings.server.listen == "127.0.0.1:8089"
    assert settings.server.tokens_file is None
    assert settings.state.resume_on_crash is True
    assert settings.state.batch_size is None


def test_default_paths_sit_under_the_root(tmp_path):
    write_config(tmp_path, "")
    settings = load_settings(tmp_path)
    paths = settings.paths

    assert settings.layout == "seed"
    assert paths.config == tmp_path / FLYWALL_HCL
    assert paths.settings == tmp_path / CONFIG
    assert paths.run_dir == tmp_path / "var/run"
    assert paths.ui_backups == tmp_path / "etc/flywall/backups"
    assert paths.migrations_dir == tmp_path / "etc/flywall/migrations"
    assert paths.state_db == tmp_path / "var/lib/flywall/state.db"
    assert paths.api_document == tmp_path / "var/lib/flywall/api.json"
    assert paths.journal == tmp_path / "var/lib/flywall/migration-journal.db"
    assert paths.lock == tmp_path / "var/lib/flywall/migration-journal.db.lock"
    assert paths.backups == tmp_path / "var/lib/flywall/migration-backups"
    assert paths.tokens_file == tmp_path / "etc/flywall/migration-api.tokens"
    assert paths.device_key_file is None
    assert paths.email_credentials_file is None


def test_a_config_without_a_migration_block_means_all_defaults(tmp_path):
    write_config(tmp_path, 'schema_version = "1.0"\n\napi {\n  enabled = true\n}\n')

    settings = load_settings(tmp_path)

    defaults = MigrationSettings()
    for key in MigrationSettings.__struct_fields__:
        assert getattr(settings, key) == getattr(defaults, key), key
    assert settings.paths.journal == tmp_path / "var/lib/flywall/migration-journal.db"


def test_every_key_of_the_migration_block_is_read(tmp_path):
    write_config(
        tmp_path,
        """
api {
  enabled = true
}

migration {
  enabled = false
  directory = "migrations.d"
  auto_migrate = true
  backup_before = false
  timeout = "1h30m"
  version_table = "flywall_versions"
  current_version = "2.3"
  strategy = "full"
  validate_before = false
  validate_after = false
  dry_run = true
  backup_retention = "1w"
  backup_location = "/srv/backups"
  auto_rollback = true
  rollback_timeout = "500ms"
  max_rollback_attempts = 0
  notify_on_start = true
  notify_on_complete = true
  notify_on_failure = false
  notification_channels = ["email", "slack"]
  confirm_within = "2h"
  include_shipped = false
  require_signatures = true
  trusted_keys = ["ed25519:aaa", "ed25519:bbb"]
  device_key_file = "keys/device.key"
  journal = "/data/journal.db"
  state_db = "/data/state.db"
  api_document = "api.json"
  tokens_file = "tokens"

  email {
    host = "mail.example.org"
    port = 587
    from = "flywall@example.org"
    to = ["ops@example.org", "noc@example.org"]
    starttls = true
    credentials_file = "smtp.cred"
  }

  slack {
    webhook_url = "https://hooks.slack.com/services/T/B/X"
  }

  server {
    listen = "0.0.0.0:9090"
  }

  state {
    resume_on_crash = false
    batch_size = 500
  }
}
""",
    )

    s = load_settings(tmp_path)

    assert s.enabled is False
    assert s.directory == "migrations.d"
    assert s.auto_migrate is True
    assert s.backup_before is False
    assert s.timeout == 5400
    assert s.version_table == "flywall_versions"
    assert s.current_version == "2.3"
    assert s.strategy == "full"
    assert (s.validate_before, s.validate_after, s.dry_run) == (False, False, True)
    assert s.backup_retention == 7 * 86400
    assert s.backup_location == "/srv/backups"
    assert s.auto_rollback is True
    assert s.rollback_timeout == pytest.approx(0.5)
    assert s.max_rollback_attempts == 0
    assert (s.notify_on_start, s.notify_on_complete, s.notify_on_failure) == (True, True, False)
    assert s.notification_channels == ("email", "slack")
    assert s.confirm_within == 7200
    assert s.include_shipped is False
    assert s.require_signatures is True
    assert s.trusted_keys == ("ed25519:aaa", "ed25519:bbb")
    assert s.device_key_file == "keys/device.key"
    assert s.journal == "/data/journal.db"
    assert s.state_db == "/data/state.db"
    assert s.api_document == "api.json"
    assert s.tokens_file == "tokens"
    assert s.email is not None
    assert s.email.host == "mail.example.org"
    assert s.email.port == 587
    assert s.email.from_ == "flywall@example.org"
    assert s.email.to == ("ops@example.org", "noc@example.org")
    assert s.email.starttls is True
    assert s.email.credentials_file == "smtp.cred"
    assert s.slack is not None
    assert s.slack.webhook_url == "https://hooks.slack.com/services/T/B/X"
    assert s.server.listen == "0.0.0.0:9090"
    assert s.state.resume_on_crash is False
    assert s.state.batch_size == 500


def test_nested_blocks_take_their_own_defaults_for_missing_keys(tmp_path):
    write_config(
        tmp_path,
        'migration {\n  email {\n    to = ["ops@example.org"]\n  }\n  slack {\n  }\n'
        '  server {\n    tokens_file = "api.tokens"\n  }\n  state {\n    batch_size = 10\n  }\n}\n',
    )

    s = load_settings(tmp_path)

    assert s.email is not None
    assert (s.email.host, s.email.port, s.email.starttls) == ("127.0.0.1", 25, False)
    assert s.email.from_ is None
    assert s.email.credentials_file is None
    assert s.slack is not None
    assert s.slack.webhook_url is None
    assert s.server.listen == "127.0.0.1:8089"
    assert s.server.tokens_file == "api.tokens"
    assert s.state.resume_on_crash is True
    assert s.state.batch_size == 10


def test_relative_paths_are_relative_to_the_config_folder_and_absolute_ones_sit_under_the_root(
    tmp_path,
):
    write_config(
        tmp_path,
        'migration {\n  directory = "migrations.d"\n  journal = "/data/journal.db"\n'
        '  backup_location = "../backups"\n  device_key_file = "/etc/keys/device.key"\n'
        '  email {\n    credentials_file = "smtp.cred"\n    ca_file = "/etc/ssl/relay-ca.pem"\n'
        "  }\n}\n",
    )

    paths = load_settings(tmp_path).paths
    config_dir = tmp_path / "etc/flywall"

    assert paths.migrations_dir == config_dir / "migrations.d"
    assert paths.journal == tmp_path / "data/journal.db"
    assert paths.lock == tmp_path / "data/journal.db.lock"
    assert paths.backups == config_dir / "../backups"
    assert paths.device_key_file == tmp_path / "etc/keys/device.key"
    assert paths.email_credentials_file == config_dir / "smtp.cred"
    assert paths.email_ca_file == tmp_path / "etc/ssl/relay-ca.pem"
    assert paths.state_db == tmp_path / "var/lib/flywall/state.db"


def test_the_server_blocks_tokens_file_overrides_the_migration_level_one(tmp_path):
    write_config(
        tmp_path,
        'migration {\n  tokens_file = "outer.tokens"\n'
        '  server {\n    tokens_file = "/srv/inner.tokens"\n  }\n}\n',
    )

    assert load_settings(tmp_path).paths.tokens_file == tmp_path / "srv/inner.tokens"


def test_an_explicit_config_path_is_used_as_given_and_its_folder_anchors_relative_paths(tmp_path):
    config = write_config(tmp_path, 'migration {\n  journal = "j.db"\n}\n', where="other/fw.hcl")
    root = tmp_path / "appliance"

    settings = load_settings(root, config)

    assert settings.config_path == config
    assert settings.paths.settings == config
    assert settings.paths.config == root / "opt/flywall/etc/flywall.hcl"  # found by layout
    assert settings.paths.journal == tmp_path / "other/j.db"
    assert settings.paths.state_db == root / "opt/flywall/var/lib/state.db"


def test_root_slash_leaves_absolute_paths_on_the_real_filesystem(tmp_path):
    config = write_config(tmp_path, 'migration {\n  directory = "m"\n}\n')

    settings = load_settings(Path("/"), config, environ={})
    paths = settings.paths

    assert settings.layout == "none"  # this test machine is no appliance
    assert paths.journal == Path("/opt/flywall/var/lib/migration-journal.db")
    assert paths.migrations_dir == config.parent / "m"


def test_durations_are_read_as_seconds():
    assert parse_duration("500ms") == pytest.approx(0.5)
    assert parse_duration("30s") == 30
    assert parse_duration("10m") == 600
    assert parse_duration("2h") == 7200
    assert parse_duration("7d") == 604800
    assert parse_duration("1w") == 604800
    assert parse_duration("1h30m") == 5400
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration("30")


def test_an_unknown_key_is_an_error_naming_the_key(tmp_path):
    message = settings_error(tmp_path, "migration {\n  bogus = 1\n}\n")

    assert message == f"{CONFIG}: migration.bogus: unknown key"


def test_an_unknown_key_in_a_nested_block_is_an_error_naming_the_dotted_key(tmp_path):
    message = settings_error(tmp_path, 'migration {\n  email {\n    hots = "x"\n  }\n}\n')

    assert message == f"{CONFIG}: migration.email.hots: unknown key"


def test_a_wrong_type_is_an_error_naming_the_key_and_both_types(tmp_path):
    message = settings_error(tmp_path, 'migration {\n  max_rollback_attempts = "3"\n}\n')

    assert message == f"{CONFIG}: migration.max_rollback_attempts: expected int, got str"


def test_a_string_is_not_accepted_for_a_boolean(tmp_path):
    message = settings_error(tmp_path, 'migration {\n  dry_run = "true"\n}\n')

    assert message == f"{CONFIG}: migration.dry_run: expected bool, got str"


def test_a_negative_rollback_attempt_count_is_an_error(tmp_path):
    message = settings_error(tmp_path, "migration {\n  max_rollback_attempts = -1\n}\n")

    assert message == f"{CONFIG}: migration.max_rollback_attempts: expected int >= 0"


def test_a_bad_duration_is_an_error_that_says_how_to_write_one(tmp_path):
    message = settings_error(tmp_path, 'migration {\n  timeout = "30x"\n}\n')

    assert message == (
        f'{CONFIG}: migration.timeout: bad duration "30x" (use e.g. 30s, 10m, 2h, 7d)'
    )


def test_a_number_is_not_accepted_for_a_duration(tmp_path):
    message = settings_error(tmp_path, "migration {\n  confirm_within = 30\n}\n")

    assert message == f"{CONFIG}: migration.confirm_within: expected a duration string, got int"


def test_an_unknown_strategy_is_an_error_listing_the_choices(tmp_path):
    message = settings_error(tmp_path, 'migration {\n  strategy = "yolo"\n}\n')

    assert message == (
        f"{CONFIG}: migration.strategy: invalid enum value 'yolo' "
        "(use one of: incremental, full, custom)"
    )


def test_a_version_table_must_be_a_plain_sql_identifier(tmp_path):
    message = settings_error(tmp_path, 'migration {\n  version_table = "x; drop"\n}\n')

    assert message == f"{CONFIG}: migration.version_table: expected a plain SQL identifier"


def test_an_unknown_notification_channel_is_an_error_naming_its_position(tmp_path):
    message = settings_error(tmp_path, 'migration {\n  notification_channels = ["pager"]\n}\n')

    assert message == (
        f"{CONFIG}: migration.notification_channels[0]: invalid enum value 'pager' "
        "(use one of: email, slack)"
    )


def test_a_listed_channel_without_its_block_is_an_error_naming_the_key(tmp_path):
    message = settings_error(tmp_path, 'migration {\n  notification_channels = ["slack"]\n}\n')

    assert message == (
        f'{CONFIG}: migration.notification_channels: "slack" is listed '
        "but the migration.slack { } block is missing"
    )


def test_two_migration_blocks_are_an_error(tmp_path):
    message = settings_error(tmp_path, "migration {\n}\n\nmigration {\n}\n")

    assert message == f"{CONFIG}: migration: block appears 2 times; allowed once"


def test_a_repeated_nested_block_is_an_error_naming_it(tmp_path):
    message = settings_error(tmp_path, "migration {\n  state {\n  }\n  state {\n  }\n}\n")

    assert message == f"{CONFIG}: migration.state: block appears 2 times; allowed once"


def test_a_migration_attribute_instead_of_a_block_is_an_error(tmp_path):
    message = settings_error(tmp_path, "migration = 3\n")

    assert message == f"{CONFIG}: migration: expected one unlabelled block"


def test_a_labelled_migration_block_is_an_error(tmp_path):
    message = settings_error(tmp_path, 'migration "main" {\n}\n')

    assert message == f"{CONFIG}: migration: expected one unlabelled block"


def test_lists_that_look_nothing_like_blocks_are_validated_as_values(tmp_path):
    write_config(tmp_path, "migration {\n  trusted_keys = []\n}\n")
    assert load_settings(tmp_path).trusted_keys == ()

    message = settings_error(tmp_path, 'migration {\n  trusted_keys = ["__is_block__", 1]\n}\n')

    assert message == f"{CONFIG}: migration.trusted_keys[1]: expected str, got int"


def test_a_nested_attribute_where_a_block_belongs_is_an_error(tmp_path):
    message = settings_error(tmp_path, "migration {\n  state = 3\n}\n")

    assert message == f"{CONFIG}: migration.state: expected block, got int"


def test_an_attribute_and_a_block_of_the_same_name_is_an_error_naming_the_file(tmp_path):
    message = settings_error(tmp_path, "migration = 1\nmigration {\n}\n")

    assert message == f"{CONFIG}: Attribute migration is already defined."


def test_an_hcl_syntax_error_names_the_file_line_and_column(tmp_path):
    write_config(tmp_path, 'migration {\n  enabled = true\n  timeout = = "30m"\n}\n')

    with pytest.raises(ConfigParseError) as info:
        load_settings(tmp_path)

    assert (info.value.line, info.value.column) == (3, 13)
    assert info.value.path == CONFIG
    assert str(info.value) == f"{CONFIG}:3:13: unexpected token '='"


def test_an_unterminated_block_is_reported_at_the_end_of_input(tmp_path):
    write_config(tmp_path, 'migration {\n  timeout = "30m"\n')

    with pytest.raises(ConfigParseError) as info:
        load_settings(tmp_path)

    assert str(info.value) == f"{CONFIG}:3:1: unexpected end of input"


def test_a_single_string_where_a_list_belongs_is_an_error_in_hcl_words(tmp_path):
    message = settings_error(tmp_path, 'migration {\n  notification_channels = "email"\n}\n')

    assert message == f"{CONFIG}: migration.notification_channels: expected list, got str"


def test_a_file_only_hcl2_can_read_is_cached_by_its_digest_and_never_hides_an_error(tmp_path):
    # The function call sends the file to python-hcl2 (plainhcl declines expressions).
    hcl2_only = 'x = max(1, 2)\nmigration {\n  timeout = "%s"\n}\n'
    config = write_config(tmp_path, hcl2_only % "5m")
    cache = tmp_path / "var/cache/flywall/settings.msgpack"

    assert load_settings(tmp_path).timeout == 300
    assert cache.exists()
    assert load_settings(tmp_path).timeout == 300  # from the cache

    config.write_text(hcl2_only % "7m")
    assert load_settings(tmp_path).timeout == 420  # a new digest: parsed again

    config.write_text("x = max(1, 2)\nmigration {\n  timeout = \n}\n")
    with pytest.raises(ConfigParseError):
        load_settings(tmp_path)
    config.write_text(hcl2_only % "7m")
    cache.unlink()
    cache.parent.chmod(0o500)
    try:
        assert load_settings(tmp_path).timeout == 420  # an unwritable cache costs a parse
    finally:
        cache.parent.chmod(0o700)


def test_a_plain_file_is_read_without_the_cache_and_without_importing_hcl2(tmp_path):
    write_config(tmp_path, 'api {\n  enabled = true\n}\n\nmigration {\n  timeout = "5m"\n}\n')
    probe = (
        "import sys; from pathlib import Path; "
        "from flywall.core.appliance.settings import load_settings; "
        f"assert load_settings(Path({str(tmp_path)!r})).timeout == 300; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('hcl2', 'lark')))"
    )

    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)

    assert done.stdout.strip() == "[]"
    assert not (tmp_path / "var").exists()
