"""Resources and functions that talk to the outside: the database, OpenAI, export files."""
