"""Settings: TOML, environment and $CREDENTIALS_DIRECTORY, validated by pydantic-settings."""
