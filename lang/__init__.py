"""The Ember language front end: grammar, AST and parser."""
