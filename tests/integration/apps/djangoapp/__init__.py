"""A minimal real Django project served by Fulmen in the integration tests."""
