/*
 * Persistence and userland-rootkit tricks seen on compromised Linux hosts and web servers.
 */

rule Linux_Rootkit_LdSoPreload_Install
{
    meta:
        author = "onaccess"
        description = "Script writing a shared object into /etc/ld.so.preload (userland rootkit install)"
        severity = "high"
        reference = "https://man7.org/linux/man-pages/man8/ld.so.8.html"

    strings:
        // echo or printf of a .so path, redirected (> or >>) into the preload list
        $echo = /\b(echo|printf)\s[^\n;|&]{1,200}\.so\b[^\n;|&]{0,40}>>?\s*['"]?\/etc\/ld\.so\.preload\b/
        // a .so path piped to tee (-a) writing the preload list
        $tee = /\.so\b[^\n;]{0,200}\|\s*(sudo\s+)?tee\s+(-a\s+)?['"]?\/etc\/ld\.so\.preload\b/

    condition:
        filesize < 1MB and uint32(0) != 0x464c457f and ($echo or $tee)
}

rule Webshell_PHP_Eval_Request
{
    meta:
        author = "onaccess"
        description = "PHP webshell: request parameters passed straight to eval/assert or a command runner"
        severity = "high"

    strings:
        $php = "<?php" ascii nocase
        $php_short = "<?=" ascii
        $eval = /\b(eval|assert)\s*\(\s*(base64_decode|gzinflate|gzuncompress|str_rot13|stripslashes)?\s*\(?\s*\$_(POST|GET|REQUEST|COOKIE|SERVER)\s*\[/ nocase
        $cmd = /\b(system|shell_exec|passthru|exec|popen|proc_open|pcntl_exec)\s*\(\s*\$_(POST|GET|REQUEST|COOKIE)\s*\[/ nocase

    condition:
        filesize < 1MB and ($php or $php_short) and ($eval or $cmd)
}
