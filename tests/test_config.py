"""Configuration: one TOML file plus MDMHUB_SECTION_KEY environment overrides, validated at start."""

import pytest

from hub.config import ConfigError, Settings, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in list(__import__("os").environ):
        if key.startswith("MDMHUB_"):
            monkeypatch.delenv(key)


def test_defaults_use_sqlite_under_the_data_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.http.port == 8080 and settings.http.host == "127.0.0.1"
    assert settings.database_url == f"sqlite:///{tmp_path / 'var' / 'mdmhub.db'}"


def test_environment_overrides_the_file_with_one_rule(tmp_path, monkeypatch):
    cfg = tmp_path / "hub.toml"
    cfg.write_text('[http]\nport = 7000\n[openadr]\nven_name = "from-file"\n[data]\ndir = "/srv/a"\n')
    monkeypatch.setenv("MDMHUB_HTTP_PORT", "9001")
    monkeypatch.setenv("MDMHUB_OPENADR_VTN_URL", "https://vtn.example/OpenADR2/Simple/2.0b")
    monkeypatch.setenv("MDMHUB_DATABASE_URL", "postgresql+psycopg://u@db/hub")
    monkeypatch.setenv("MDMHUB_DATA_DIR", "/srv/b")
    settings = load_settings(cfg)
    assert settings.http.port == 9001
    assert settings.openadr.vtn_url.endswith("2.0b") and settings.openadr.ven_name == "from-file"
    assert settings.database_url == "postgresql+psycopg://u@db/hub"
    assert str(settings.data.dir) == "/srv/b"


def test_bad_values_are_named_with_their_setting_and_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("MDMHUB_HTTP_PORT", "eighty")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "[http] port" in str(err.value) and "MDMHUB_HTTP_PORT" in str(err.value) and "'eighty'" in str(err.value)


def test_unknown_keys_and_backends_are_refused(tmp_path):
    cfg = tmp_path / "hub.toml"
    cfg.write_text('[http]\nprot = 1\n')
    with pytest.raises(ConfigError, match="prot"):
        load_settings(cfg)
    cfg.write_text('[database]\nurl = "mysql://x"\n')
    with pytest.raises(ConfigError, match="sqlite"):
        load_settings(cfg)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml")


def test_every_setting_is_documented_in_the_configuration_guide():
    from pathlib import Path

    guide = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    undocumented = [f"{section}.{key}" for section, field in Settings.model_fields.items()
                    for key in field.annotation.model_fields
                    if f"| `{section}.{key}` |" not in guide]
    assert not undocumented, f"settings missing from docs/configuration.md: {undocumented}"
