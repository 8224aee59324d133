test -s hello.txt
