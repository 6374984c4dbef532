"""Builds from source: fetch a commit, build its image, run its tests, push it to the site
registry (`environments.build`)."""
