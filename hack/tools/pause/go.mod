module roger.dev/tools/pause

go 1.22
