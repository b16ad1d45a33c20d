"""A generic local runtime for AWS SAM templates: an AWS emulator, every resource, every trigger."""
