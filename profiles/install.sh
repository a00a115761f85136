#!/usr/bin/env bash
# Install the cluster profiles under their names, so `snakemake --profile slurm`
# (or `sge`) works from any directory.
#
# Usage: bash profiles/install.sh
#
# Snakemake looks a bare profile name up in the current directory, then in
# $XDG_CONFIG_HOME/snakemake (~/.config/snakemake when XDG_CONFIG_HOME is unset or
# not an absolute path) and /etc/xdg/snakemake. Each profile goes there as a
# symlink to this repository's folder, so it stays in step with the repository
# (a `git pull` updates it), and a file the profile names, such as the SGE
# profile's sge-status.sh, is still found next to its config.yaml.
#
# Running it again changes nothing. A profile of the same name that is not a
# symlink (a copy, or one of your own) is left alone, with an error; a symlink is
# replaced, so the profiles of a moved clone are re-linked.
set -euo pipefail

repo_profiles=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)

# As Snakemake (platformdirs) reads it: a relative XDG_CONFIG_HOME is ignored.
config_home=${XDG_CONFIG_HOME:-}
if [[ $config_home != /* ]]; then
    config_home=${HOME:?HOME is not set}/.config
fi
target_dir=$config_home/snakemake

mkdir -p "$target_dir"
status=0
for name in slurm sge; do
    source=$repo_profiles/$name
    target=$target_dir/$name
    if [[ -e $target && ! -L $target ]]; then
        echo "error: $target exists and is not a symlink; not replacing it." >&2
        echo "       Move it away and run this again, or use" \
            "--profile $source." >&2
        status=1
        continue
    fi
    if [[ -L $target ]]; then
        previous=$(readlink "$target")
        if [[ $previous == "$source" ]]; then
            echo "$name: already installed ($target -> $source)"
            continue
        fi
        echo "$name: replacing the symlink $target -> $previous"
    fi
    # -n: replace a symlink to a folder instead of creating a link inside it.
    ln -sfn "$source" "$target"
    echo "$name: installed ($target -> $source)"
done
exit "$status"
