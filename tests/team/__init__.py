"""The team stack's tests: a package, so that its one stack (scope "package") stops when they end."""
