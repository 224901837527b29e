"""The REST front-end: Klein routes, the guarded twisted.web site, the OpenAPI
document and the console's files."""
