# Shared by the bench/*.sh scripts that each own one "## Section" of bench/RESULTS.md.

# write_section FILE SECTION SCRIPT TABLE NOTES: replace (or append) SECTION in FILE, keeping
# everything else; the section ends at the next "## " heading.
write_section() {
	local file=$1 section=$2 script=$3 table=$4 notes=$5 tmp
	tmp=$(mktemp "$file.XXXXXX")
	if [ -f "$file" ]; then
		awk -v s="$section" '$0 == s { skip = 1; next } skip && /^## / { skip = 0 } !skip' "$file" |
			sed -e :a -e '/^\n*$/{$d;N;ba' -e '}' >"$tmp"
	else
		printf '# promguard benchmark results\n' >"$tmp"
	fi
	printf '\n%s\n\nWritten by `%s`.\n\n%s\n\n%s\n' "$section" "$script" "$table" "$notes" >>"$tmp"
	chmod 644 "$tmp" # mktemp made it 0600
	mv "$tmp" "$file"
}
