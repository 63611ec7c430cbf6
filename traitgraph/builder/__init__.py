"""The builder: the build plan, the content-addressed cache, doit tasks and status."""
